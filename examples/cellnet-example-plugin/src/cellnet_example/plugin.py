"""Registration only: names, config classes and lazily imported factories."""

from cellnet_core import hookimpl

from cellnet_example.config import CharNgramConfig, CosineMarginLossConfig, GreetingsConfig, ResidualTanhCellConfig


@hookimpl
def cellnet_register_components(registry):
    """Register the ``greetings`` dataset, the ``char-ngram`` encoder, the ``residual-tanh`` lattice
    cell and the ``cosine-margin`` loss."""
    registry.add("dataset", "greetings", GreetingsConfig, "cellnet_example.components:build_greetings",
                 summary="24 hand-written greeting pairs (example plugin)")
    registry.add("encoder", "char-ngram", CharNgramConfig, "cellnet_example.components:build_char_ngram",
                 summary="hashed character n-grams, L2-normalised (example plugin)")
    registry.add("cell", "residual-tanh", ResidualTanhCellConfig, "cellnet_example.learning:build_residual_tanh",
                 summary="tanh MLP over neighbour mean, own state and input; zero update at init (example plugin)")
    registry.add("loss", "cosine-margin", CosineMarginLossConfig, "cellnet_example.learning:build_cosine_margin",
                 summary="CosFace-style large-margin softmax over the batch's answers (example plugin)")
