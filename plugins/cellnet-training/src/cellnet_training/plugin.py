"""Registers the training strategies, the losses, the equal-size ``mlp`` evaluation baseline and
``cellnet train --nproc``."""

from __future__ import annotations

from cellnet_core import hookimpl
from cellnet_training import config as c

_IMPL = "cellnet_training.strategies"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the losses and the training strategies."""
    registry.add("loss", "cosine", c.CosineLossConfig, "cellnet_training.losses:build_cosine",
                 summary="1 − cos(prediction, true answer)")
    registry.add("loss", "mse", c.MSELossConfig, "cellnet_training.losses:build_mse",
                 summary="squared L2 distance to the true answer")
    registry.add("loss", "infonce", c.InfoNCELossConfig, "cellnet_training.losses:build_infonce",
                 summary="cross-entropy of the true answer among the batch's candidates (cosine / temperature)")
    registry.add("loss", "triplet", c.TripletLossConfig, "cellnet_training.losses:build_triplet",
                 summary="hinge on cosine: the true answer above the hardest wrong candidate by a margin")
    registry.add("strategy", "autoencoder", c.AutoencoderConfig, f"{_IMPL}:build_autoencoder",
                 summary="train reshaper+core to return each embedding through the lattice (reconstruction)")
    registry.add("strategy", "dialogue", c.DialogueConfig, f"{_IMPL}:build_dialogue",
                 summary="train reshaper+core to map question embeddings onto answer embeddings")
    registry.add("strategy", "curriculum", c.CurriculumConfig, f"{_IMPL}:build_curriculum",
                 summary="dialogue ordered easy→hard by baseline cosine, with a competence schedule")
    registry.add("strategy", "decoder", c.DecoderTrainingConfig, f"{_IMPL}:build_decoder",
                 summary="fit the pipeline's decoder on texts and their embeddings")
    registry.add("strategy", "distill", c.DistillConfig, f"{_IMPL}:build_distill",
                 summary="multi-teacher distillation of answer embeddings into reshaper+core")
    registry.add("strategy", "listwise", c.ListwiseConfig, "cellnet_training.listwise:build_listwise",
                 summary="train a pair scorer on answer selection: softmax over each question's candidates "
                         "(labelled wrong ones and in-batch answers), validated by per-question MAP")
    registry.add("strategy", "context", c.ContextConfig, "cellnet_training.context:build_context",
                 summary="the last k turns of a conversation (one reshaper slot each) → the next turn's embedding")


@hookimpl
def cellnet_eval_baselines():
    """The equal-size ``mlp`` baseline for ``cellnet eval``."""
    from cellnet_training.baselines import MLPBaseline

    return [MLPBaseline()]


@hookimpl
def cellnet_register_commands(cli) -> None:
    """Add ``--nproc N`` to ``cellnet train``: data-parallel training in N processes."""
    from cellnet_training.commands import EXAMPLES, configure_train, run_train

    cli.add_options("train", configure_train, run=run_train, examples=EXAMPLES)
