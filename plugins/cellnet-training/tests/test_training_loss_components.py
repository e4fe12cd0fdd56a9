"""Losses are registered components: the built-in losses pass the core's ``LossContract``; each
term of ``training.loss`` has its own validated config; a loss from another plugin is selected by
name and built through the registry entry its term was validated against."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import Field

from cellnet_core import hookimpl
from cellnet_core.config import ComponentConfig
from cellnet_core.testing.contracts import LossContract


class TestCosineLoss(LossContract):
    name = "cosine"


class TestMSELoss(LossContract):
    name = "mse"


class TestInfoNCELoss(LossContract):
    name = "infonce"
    config = {"temperature": 0.1}


class TestTripletLoss(LossContract):
    name = "triplet"


def test_yaml_forms_validate_to_terms(registry):
    """``loss: infonce``, one mapping, and a weighted list all become terms with their own
    configs; the resolved form validates back to the same config; options default to the
    strategy's temperature and margin."""
    from cellnet_training.losses import CombinedLoss

    by_name = registry.config_for("strategy", {"name": "dialogue", "loss": "infonce"}, where="training")
    assert [(t.name, t.weight) for t in by_name.loss] == [("infonce", 1.0)]
    one = registry.config_for("strategy", {"name": "dialogue", "temperature": 0.2,
                                           "loss": {"name": "triplet", "margin": 0.5}}, where="training")
    assert one.loss[0].config.margin == 0.5
    listed = registry.config_for("strategy", {"name": "dialogue", "temperature": 0.2, "loss": [
        {"name": "infonce", "weight": 1}, {"name": "cosine", "weight": 0.5}]}, where="training")
    dumped = listed.model_dump(mode="json")["loss"]
    assert dumped == [{"name": "infonce", "temperature": None, "weight": 1.0}, {"name": "cosine", "weight": 0.5}]
    assert registry.config_for("strategy", listed.model_dump(mode="json"), where="training") == listed
    combo = CombinedLoss(listed.loss, listed.temperature, listed.margin)
    assert combo.parts[0].temperature == 0.2 and combo.uses_negatives
    assert CombinedLoss(one.loss, one.temperature, one.margin).parts[0].margin == 0.5


def test_bad_loss_terms_name_their_path(registry):
    """Unknown names list the registered losses; a misspelt option and a bad weight name their term."""
    from cellnet_core.errors import ConfigError

    def check(loss, pattern):
        with pytest.raises(ConfigError, match=pattern):
            registry.config_for("strategy", {"name": "dialogue", "loss": loss}, where="training")

    check("infonse", r"training\.loss\.name: unknown 'infonse'; available: .*infonce.*; did you mean 'infonce'\?")
    check([{"name": "cosine"}, {"name": "triplet", "margn": 1}], r"training\.loss\[1\]\.margn: unknown field")
    check([{"name": "cosine", "weight": -1}], r"training\.loss\[0\]\.weight: a weight between 0 and 1000")
    check([], "give at least one loss term")


class MarginConfig(ComponentConfig):
    """Test loss: the true answer's cosine above a margin."""

    name: Literal["above-margin"] = "above-margin"
    margin: float = Field(0.5, description="cosine the true answer should reach")


class AboveMargin:
    uses_negatives = False

    def __init__(self, margin: float):
        self.margin = margin

    def __call__(self, batch):
        cos = torch.nn.functional.cosine_similarity(batch.pred, batch.cols[batch.pos], dim=-1)
        return torch.relu(self.margin - cos).mean()


class _Plugin:
    @hookimpl
    def cellnet_register_components(self, registry):
        registry.add("loss", "above-margin", MarginConfig, lambda cfg, ctx: AboveMargin(cfg.margin),
                     summary="test loss: cosine to the true answer above a margin")


def test_third_party_loss_through_registry(tmp_plugin):
    """A plugin's loss validates by name with its options and is built from its term alone."""
    import cellnet_training.plugin

    from cellnet_core.plugins import collect_registry, create_plugin_manager, register_plugin
    from cellnet_training.losses import CombinedLoss, LossBatch

    pm = create_plugin_manager(autoload=False)
    register_plugin(pm, cellnet_training.plugin, "cellnet-training", "0")
    plugin = _Plugin()
    register_plugin(pm, plugin, "tmp-loss", "0")
    try:
        reg = collect_registry(pm)
        cfg = reg.config_for("strategy", {"name": "dialogue", "loss": [
            {"name": "above-margin", "margin": 0.9}, {"name": "cosine", "weight": 0.0}]}, where="training")
    finally:
        pm.unregister(plugin)
    loss = CombinedLoss(cfg.loss)  # built from the entries the terms were validated against
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    cols = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    batch = LossBatch(pred, cols, torch.tensor([0, 1]))
    want = torch.relu(0.9 - torch.tensor([1.0, 2 ** -0.5])).mean()
    torch.testing.assert_close(loss(batch), want)
    assert not loss.uses_negatives and loss.names == ["above-margin", "cosine"]
