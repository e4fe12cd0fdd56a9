"""Registration only: names, config classes and lazily imported factories."""

from cellnet_core import hookimpl

from cellnet_example.config import CharNgramConfig, GreetingsConfig


@hookimpl
def cellnet_register_components(registry):
    """Register the ``greetings`` dataset and the ``char-ngram`` encoder."""
    registry.add("dataset", "greetings", GreetingsConfig, "cellnet_example.components:build_greetings",
                 summary="24 hand-written greeting pairs (example plugin)")
    registry.add("encoder", "char-ngram", CharNgramConfig, "cellnet_example.components:build_char_ngram",
                 summary="hashed character n-grams, L2-normalised (example plugin)")
