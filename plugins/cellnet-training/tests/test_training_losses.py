from __future__ import annotations

import pytest
import torch

from cellnet_training.config import DialogueConfig
from cellnet_training.engine import Schedule, ranking_metrics
from cellnet_training.losses import CombinedLoss, LossBatch


def _batch(pred, cols, pos):
    return LossBatch(torch.tensor(pred, dtype=torch.float32), torch.tensor(cols, dtype=torch.float32),
                     torch.tensor(pos))


def test_perfect_prediction_has_low_loss_for_every_loss():
    b = _batch([[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 1])
    for name in ("cosine", "mse"):
        assert float(CombinedLoss(name)(b)) == pytest.approx(0.0, abs=1e-6)
    assert float(CombinedLoss("triplet", margin=0.2)(b)) == pytest.approx(0.0, abs=1e-6)
    assert float(CombinedLoss("infonce", temperature=0.05)(b)) < 1e-6


def test_wrong_prediction_costs_more_and_weights_combine():
    good = _batch([[1, 0, 0]], [[1, 0, 0], [0, 1, 0]], [0])
    bad = _batch([[0, 1, 0]], [[1, 0, 0], [0, 1, 0]], [0])
    for name in ("cosine", "mse", "infonce", "triplet"):
        assert float(CombinedLoss(name)(bad)) > float(CombinedLoss(name)(good))
    cfg = DialogueConfig(loss=[{"name": "infonce", "weight": 1}, {"name": "cosine", "weight": 0.5}])
    combo = CombinedLoss(cfg.loss)
    expect = float(CombinedLoss("infonce")(bad)) + 0.5 * float(CombinedLoss("cosine")(bad))
    assert float(combo(bad)) == pytest.approx(expect, rel=1e-6)
    assert combo.uses_negatives and not CombinedLoss("cosine").uses_negatives


def test_ranking_metrics_pessimistic_ties():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 tie for the first question
    m = ranking_metrics(pred, bank, torch.tensor([0, 2]))
    assert m["recall@1"] == pytest.approx(0.5) and m["mrr"] == pytest.approx(0.75)


def test_schedule_warmup_cosine_and_plateau():
    s = Schedule(DialogueConfig(lr=1.0, epochs=10, warmup_epochs=2, schedule="cosine", min_lr_ratio=0.0))
    assert s.lr(1.0) == pytest.approx(0.5 * (0.5 * (1 + torch.cos(torch.tensor(0.1 * torch.pi)))).item(), rel=1e-5)
    assert s.lr(10.0) == pytest.approx(0.0, abs=1e-9)
    p = Schedule(DialogueConfig(lr=1.0, warmup_epochs=0, schedule="plateau", plateau_patience=1, plateau_factor=0.5))
    for score in (0.5, 0.4, 0.4):
        p.observe(score)
    assert p.lr(3) == pytest.approx(0.5)
    q = Schedule(p.cfg)
    q.load_state_dict(p.state_dict())
    assert q.lr(3) == p.lr(3)


def test_config_rejects_bad_loss(fake_reg):
    from cellnet_core.errors import ConfigError

    _, reg = fake_reg
    with pytest.raises(ConfigError, match="training.loss"):
        reg.config_for("strategy", {"name": "dialogue", "loss": "hinge"}, where="training")
    with pytest.raises(ConfigError, match="at least one loss"):
        reg.config_for("strategy", {"name": "dialogue", "loss": []}, where="training")
