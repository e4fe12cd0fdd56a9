"""The built-in plugin: registers the core's reference parts through the public hook."""

from __future__ import annotations

from cellnet_core.builtin import configs as c
from cellnet_core.hookspecs import hookimpl

_IMPL = "cellnet_core.builtin.components"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the core's reference parts: ``hashing``, ``flat``, ``identity``, ``nearest``,
    ``retrieval``."""
    registry.add("encoder", "hashing", c.HashingEncoderConfig, f"{_IMPL}:build_hashing",
                 summary="feature hashing of word n-grams, L2-normalised (no weights; tests, lexical baseline)")
    registry.add("reshaper", "flat", c.FlatReshaperConfig, f"{_IMPL}:build_flat",
                 summary="exact reshape of D into X·Y·Z·C and back")
    registry.add("core", "identity", c.IdentityCoreConfig, f"{_IMPL}:build_identity",
                 summary="identity: the question's embedding is the answer's (baseline)")
    registry.add("decoder", "nearest", c.NearestDecoderConfig, f"{_IMPL}:build_nearest",
                 summary="exact cosine search over the texts it was fit on")
    registry.add("strategy", "retrieval", c.RetrievalStrategyConfig, f"{_IMPL}:build_retrieval",
                 summary="fit the decoder on the training answers (retrieval baseline)")


@hookimpl
def cellnet_eval_baselines():
    """The core's evaluation baselines: ``identity``, ``mean`` and ``ridge``."""
    from cellnet_core.evaluation import IdentityBaseline, MeanBaseline, RidgeBaseline

    return [IdentityBaseline(), MeanBaseline(), RidgeBaseline()]
