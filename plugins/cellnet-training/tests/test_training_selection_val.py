"""Validation on answer-selection data ranks each question's own candidates (MAP / MRR, the code
``cellnet eval`` uses), not the val split's pooled answers; early stopping and the best checkpoint
follow it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cellnet_core.errors import ConfigError
from cellnet_core.interfaces import Pair, SelectionItem

# answer space (dims 0–2) and question ids (dims 3–4): A1 = e0, A2 = e1; each wrong candidate
# leans towards the shared direction e2
_E = torch.eye(5)
_VEC = {
    "q1": _E[3], "q2": _E[4],
    "a1": _E[0], "a2": _E[1],
    "w1": F.normalize(_E[0] + 0.3 * _E[2], dim=0), "w2": F.normalize(_E[1] + 0.3 * _E[2], dim=0),
}


def _pred(*rows):
    return torch.stack([F.normalize(r, dim=0) for r in rows])


# the model's output per epoch (rows: q1, q2); epoch 3 falls back to the untrained outputs
SCRIPT = torch.stack([
    # epoch 0: a1 and a2 tie (pooled rank 2), the wrong candidate beats the right one: MAP 0.5, pooled MRR 0.5
    _pred(_E[0] + _E[1] + _E[2], _E[0] + _E[1] + _E[2]),
    # epoch 1: nearest to its own answer among the pooled ones (pooled MRR 1) but the wrong
    # candidate is nearer still (MAP 0.5)
    _pred(_E[0] + 0.5 * _E[2], _E[1] + 0.5 * _E[2]),
    # epoch 2: the other question's answer is nearer (pooled MRR 0.5), but among its own candidates
    # the right one wins (MAP 1)
    _pred(_E[0] + 1.2 * _E[1] - 0.5 * _E[2], _E[1] + 1.2 * _E[0] - 0.5 * _E[2]),
    _pred(_E[0] + _E[1] + _E[2], _E[0] + _E[1] + _E[2]),
])


class LookupEncoder:
    """A tiny fake teacher: a fixed vector per known text."""

    dim, fingerprint = 5, "lookup-test"

    def encode(self, texts):
        return torch.stack([_VEC[t] for t in texts])


class ScriptedModel(nn.Module):
    """Outputs ``SCRIPT[epoch]`` for the question it recognises (by its id dimension); the epoch
    advances on every ``train(True)`` (the engine calls it once per epoch) and is a buffer, so the
    best checkpoint restores it. No parameters: the engine trains nothing and only validates."""

    def __init__(self):
        super().__init__()
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):
        if mode:
            self.epoch += 1
        return super().train(mode)

    def forward(self, x):
        row = x[:, 3:5].argmax(1)
        return SCRIPT[int(self.epoch.clamp(max=3))][row]


class SelectionData:
    """Two questions, each with its right answer and one labelled wrong candidate."""

    def __init__(self, selection: bool = True):
        self.with_selection = selection

    def pairs(self, split):
        return [Pair("q1", "a1"), Pair("q2", "a2")]

    def selection(self, split):
        if not self.with_selection:
            raise NotImplementedError("no selection view")
        return [SelectionItem("q1", ["w1", "a1"], [0, 1]), SelectionItem("q2", ["a2", "w2"], [1, 0])]


def _fit(tmp_path, data, name, **training):
    from cellnet_core.run import RunContext
    from cellnet_training.config import DialogueConfig
    from cellnet_training.engine import Engine, ModuleModel
    from cellnet_training.strategies import pair_sets

    cfg = DialogueConfig(epochs=3, batch_size=2, early_stopping=0, plots=False, selection_negatives=False,
                         **training)
    enc = LookupEncoder()
    pipe = SimpleNamespace(encoder=enc, encode=enc.encode)
    trainset, valset, _ = pair_sets(pipe, data, cfg)
    run = RunContext(tmp_path / name, seed=0)
    result = Engine(cfg, label="dialogue").fit(ModuleModel(ScriptedModel()), trainset, valset, run)
    return result, valset, run.read_metrics()


def test_selection_validation_picks_the_epoch_that_ranks_own_candidates_best(tmp_path):
    result, valset, rows = _fit(tmp_path, SelectionData(selection=True), "sel")
    # the val set: both questions, each unique candidate embedded once
    assert valset.selection is not None and valset.selection.questions == 2
    assert valset.selection.cands.shape == (4, 5) and valset.selection.owner.tolist() == [0, 0, 1, 1]
    by_epoch = {r["epoch"]: r for r in rows}
    assert [by_epoch[e]["val_map"] for e in range(4)] == pytest.approx([0.5, 0.5, 1.0, 0.5])
    assert [by_epoch[e]["val_pooled_mrr"] for e in range(4)] == pytest.approx([0.5, 1.0, 0.5, 0.5])
    assert result.best_epoch == 2  # per-question MAP (the default on selection data)
    assert result.metrics["val_map"] == pytest.approx(1.0)  # the best epoch's weights were restored
    assert result.metrics["val_mrr"] == pytest.approx(1.0)  # per-question MRR on selection data

    # the same data without its selection view: pooled ranking, as before, picks another epoch
    pooled, valset, rows = _fit(tmp_path, SelectionData(selection=False), "pooled")
    assert valset.selection is None and "val_map" not in rows[0]
    assert pooled.best_epoch == 1 and pooled.metrics["val_mrr"] == pytest.approx(1.0)

    # asked for explicitly, pooled MRR is still there on selection data; per-question MRR too
    chosen, _, _ = _fit(tmp_path, SelectionData(selection=True), "recall", val_metric="recall@1")
    assert chosen.best_epoch == 1
    chosen, _, _ = _fit(tmp_path, SelectionData(selection=True), "mrr", val_metric="mrr")
    assert chosen.best_epoch == 2


def test_map_on_pair_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="val_metric: 'map'.*needs a dataset with answer selection"):
        _fit(tmp_path, SelectionData(selection=False), "map", val_metric="map")


def test_selection_metrics_agree_with_cellnet_eval(make_run):
    """On a real (fake) pipeline the validation MAP/MRR equal evaluate_selection's on the same items."""
    from cellnet_core.evaluation import evaluate_selection

    pipe, data, strategy, run = make_run({"name": "dialogue", "epochs": 3, "batch_size": 32, "lr": 3e-3,
                                          "early_stopping": 0, "plots": False, "restore_best": False},
                                         data={"name": "fake-wordmap", "selection": True})
    ctx = run()
    result = strategy.fit(pipe, data, ctx)
    rows = ctx.read_metrics()
    assert {"val_map", "val_mrr", "val_pooled_mrr", "val_pooled_recall@1", "val_cosine", "val_loss"} <= set(rows[-1])
    scores = [r["val_map"] for r in rows]
    assert rows[-1]["best_epoch"] == max(range(len(rows)), key=lambda i: (scores[i], -i))
    want = evaluate_selection(pipe, data.selection("val"))["rows"][0]
    assert result.metrics["val_map"] == pytest.approx(want["map"], abs=1e-6)
    assert result.metrics["val_mrr"] == pytest.approx(want["mrr"], abs=1e-6)


def test_default_metric_is_map_on_selection_and_mrr_on_pairs(make_run):
    from cellnet_training.engine import resolve_val_metric

    for selection, want in ((True, "map"), (False, "mrr")):
        pipe, data, strategy, run = make_run({"name": "dialogue", "epochs": 0, "plots": False},
                                             data={"name": "fake-wordmap", "selection": selection})
        from cellnet_training.strategies import pair_sets

        _, valset, _ = pair_sets(pipe, data, strategy.cfg)
        assert strategy.cfg.val_metric == "auto" and resolve_val_metric("auto", valset) == want


def test_pooled_mrr_ranks_all_answers_on_selection_and_pairs_data(make_run):
    """``val_metric: pooled_mrr`` follows the pooled ranking on selection data (``pooled_mrr``) and is
    plain ``mrr`` on pairs data; early stopping and the best epoch follow it."""
    from cellnet_training.engine import resolve_val_metric
    from cellnet_training.strategies import pair_sets

    for selection, want in ((True, "pooled_mrr"), (False, "mrr")):
        pipe, data, strategy, run = make_run({"name": "dialogue", "epochs": 0, "plots": False},
                                             data={"name": "fake-wordmap", "selection": selection})
        _, valset, _ = pair_sets(pipe, data, strategy.cfg)
        assert resolve_val_metric("pooled_mrr", valset) == want
    pipe, data, strategy, run = make_run({"name": "dialogue", "epochs": 3, "plots": False, "val_metric": "pooled_mrr",
                                          "early_stopping": 0}, data={"name": "fake-wordmap", "selection": True})
    ctx = run()
    strategy.fit(pipe, data, ctx)
    rows = ctx.read_metrics()
    scores = [r["val_pooled_mrr"] for r in rows]
    assert rows[-1]["best_epoch"] == max(range(len(rows)), key=lambda i: (scores[i], -i))
