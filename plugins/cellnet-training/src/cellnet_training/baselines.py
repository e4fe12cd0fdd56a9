"""The ``mlp`` evaluation baseline: a residual MLP with as many parameters as the run's trainable
modules, trained with the run's own loss, optimiser, schedule, epochs and batch size."""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

try:  # the core's base class when present; plain object otherwise
    from cellnet_core.evaluation import Baseline
except ImportError:  # pragma: no cover
    Baseline = object  # type: ignore[misc,assignment]


class ResidualMLP(nn.Module):
    """``q + W2·gelu(W1·q + b1) + b2`` (residual when sizes match); ``W2`` starts at zero, so at
    initialisation it is the identity baseline, as a residual lattice is."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.residual = d_in == d_out

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """``q [B, D_in]`` → ``[B, D_out]``."""
        out = self.fc2(nn.functional.gelu(self.fc1(q)))
        return q + out if self.residual else out


def hidden_for(n_params: int, d_in: int, d_out: int) -> int:
    """Hidden width whose MLP has the closest parameter count to ``n_params`` (at least 1)."""
    return max(1, round((n_params - d_out) / (d_in + d_out + 1)))


def training_config(pipeline: Any) -> Any:
    """The run's training options for the baseline (dialogue defaults when the run has none), with
    early stopping, best-epoch restore, plots and selection negatives off (it has no validation split)."""
    from cellnet_training.config import DialogueConfig, OptimisationConfig

    cfg = getattr(getattr(pipeline, "config", None), "training", None)
    if not isinstance(cfg, OptimisationConfig):
        cfg = DialogueConfig()
    # no validation split here: train the configured epochs, keep the last weights
    return cfg.model_copy(update={"early_stopping": 0, "restore_best": False, "plots": False,
                                  "selection_negatives": False})


class MLPBaseline(Baseline):
    """The ``mlp`` evaluation baseline (:class:`ResidualMLP` of the run's size, trained like the run)."""
    name = "mlp"
    description = "residual MLP with the run's parameter count, trained like the run"

    def __init__(self) -> None:
        self.model: ResidualMLP | None = None
        self.n_params = 0

    def fit(self, train_q: torch.Tensor, train_a: torch.Tensor, pipeline: Any) -> None:
        """Train on question embeddings ``train_q [N, D_in]`` → answer embeddings ``train_a [N, D_out]``."""
        from cellnet_core.run import RunContext
        from cellnet_training.engine import Engine, ModuleModel, TrainSet

        target = sum(p.numel() for p in pipeline.parameters() if p.requires_grad)
        d_in, d_out = train_q.shape[1], train_a.shape[1]
        cfg = training_config(pipeline)
        seed = int(getattr(pipeline.config, "seed", 0))
        torch.manual_seed(seed)
        self.model = ResidualMLP(d_in, hidden_for(target, d_in, d_out), d_out)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.target_params = target
        bank, pos = torch.unique(train_a.float(), dim=0, return_inverse=True)
        with tempfile.TemporaryDirectory(prefix="cellnet-mlp-") as tmp:
            run = RunContext(tmp, seed=seed)
            run.rank, run.world_size = 0, 1
            Engine(cfg, label="mlp").fit(ModuleModel(self.model), TrainSet(train_q.float(), pos, bank), None, run)
        self.model.eval()

    def predict(self, q: torch.Tensor) -> torch.Tensor:
        """Predicted answer embeddings ``[B, D_out]`` for questions ``q [B, D_in]``."""
        assert self.model is not None, "fit first"
        with torch.no_grad():
            return self.model(q.float()).detach()
