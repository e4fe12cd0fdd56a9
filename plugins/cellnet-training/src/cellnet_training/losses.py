"""Losses between predicted embeddings and an answer bank.

Every loss sees the same batch view: ``pred [b, D]`` (the pipeline's output), ``cols [K, D]`` the
candidate answers of the batch (the batch's own answers, mined hard negatives and labelled wrong
candidates, each answer once), and ``pos [b]`` the column of each row's true answer. Because each
answer text appears in ``cols`` once, an answer shared by two questions is never a false negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class LossBatch:
    """The batch view every loss sees (see the module doc)."""
    pred: torch.Tensor  #: [b, D] predictions
    cols: torch.Tensor  #: [K, D] candidate answer embeddings
    pos: torch.Tensor  #: [b] long, column of the true answer


def cosine_loss(batch: LossBatch, **_: Any) -> torch.Tensor:
    """``1 − cos(pred, true answer)``, averaged over the batch."""
    target = batch.cols[batch.pos]
    return (1.0 - F.cosine_similarity(batch.pred, target, dim=-1)).mean()


def mse_loss(batch: LossBatch, **_: Any) -> torch.Tensor:
    """Squared L2 distance per row (summed over D), averaged over the batch."""
    target = batch.cols[batch.pos]
    return (batch.pred - target).pow(2).sum(-1).mean()


def infonce_loss(batch: LossBatch, temperature: float = 0.05, **_: Any) -> torch.Tensor:
    """Cross-entropy of the true answer among all columns, cosine logits / temperature."""
    logits = F.normalize(batch.pred, dim=-1) @ F.normalize(batch.cols, dim=-1).T / temperature
    return F.cross_entropy(logits, batch.pos)


def triplet_loss(batch: LossBatch, margin: float = 0.2, **_: Any) -> torch.Tensor:
    """``relu(margin − cos(pred, true) + max cos(pred, wrong))`` with the hardest wrong column."""
    sims = F.normalize(batch.pred, dim=-1) @ F.normalize(batch.cols, dim=-1).T
    pos = sims.gather(1, batch.pos[:, None]).squeeze(1)
    if sims.shape[1] < 2:
        return torch.relu(margin - pos).mean()
    mask = F.one_hot(batch.pos, sims.shape[1]).bool()
    hardest = sims.masked_fill(mask, float("-inf")).max(dim=1).values
    return torch.relu(margin - pos + hardest).mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cosine": cosine_loss,
    "mse": mse_loss,
    "infonce": infonce_loss,
    "triplet": triplet_loss,
}

#: losses that use other columns than the true answer (they profit from negatives)
CONTRASTIVE = {"infonce", "triplet"}


class CombinedLoss(nn.Module):
    """Weighted sum of named losses, from the config's ``loss`` field (a name or a list of terms)."""

    def __init__(self, spec: Any, temperature: float = 0.05, margin: float = 0.2):
        super().__init__()
        if isinstance(spec, str):
            terms = [(spec, 1.0)]
        else:
            terms = [(t.name if hasattr(t, "name") else t["name"],
                      float(t.weight if hasattr(t, "weight") else t.get("weight", 1.0))) for t in spec]
        self.terms = terms
        self.temperature, self.margin = temperature, margin

    @property
    def names(self) -> list[str]:
        """The names of the terms."""
        return [n for n, _ in self.terms]

    @property
    def uses_negatives(self) -> bool:
        """Whether a term uses other columns than the true answer (infonce, triplet)."""
        return any(n in CONTRASTIVE for n in self.names)

    def forward(self, batch: LossBatch) -> torch.Tensor:
        """The weighted sum of the terms on ``batch``."""
        total = batch.pred.new_zeros(())
        for name, weight in self.terms:
            if weight:
                total = total + weight * LOSSES[name](batch, temperature=self.temperature, margin=self.margin)
        return total
