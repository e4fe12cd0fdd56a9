"""A lattice cell and a training loss, written against the documented call conventions only (this
package imports no other plugin): the lattice calls ``cell(neigh, own, inp)``; a strategy calls
``loss(batch)`` with ``batch.pred``, ``batch.cols`` and ``batch.pos``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualTanhCell(nn.Module):
    """``delta = out(tanh(inp_layer(concat(mean_K(neigh), own, inp))))``.

    Shapes: ``neigh [..., K, C]``, ``own [..., C]``, ``inp [..., C] | None`` → ``delta [..., C]``;
    any leading dims. The neighbours enter through their mean (so the cell has the same size for
    6, 18 or 26 neighbours); ``inp=None`` (no input at this step) is exactly zeros. ``out`` starts
    at zero, so an untrained lattice is the identity; the outer ``tanh`` bounds each step's update
    by ``scale`` in every channel, so long rollouts cannot explode.
    """

    #: each cell's update reads only its own row: the fast kernels may evaluate it in blocks
    rowwise = True

    def __init__(self, channels: int, hidden: int = 16, scale: float = 1.0):
        super().__init__()
        self.channels, self.hidden, self.scale = int(channels), int(hidden), float(scale)
        self.inp_layer = nn.Linear(3 * channels, hidden)
        self.out = nn.Linear(hidden, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, neigh: torch.Tensor, own: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """``neigh [..., K, C]``, ``own [..., C]``, ``inp [..., C] | None`` → ``delta [..., C]``."""
        x = torch.cat([neigh.mean(-2), own, inp if inp is not None else torch.zeros_like(own)], dim=-1)
        return self.scale * torch.tanh(self.out(torch.tanh(self.inp_layer(x))))


class CosineMarginLoss:
    """CosFace-style large-margin softmax over the batch's candidate answers:
    ``cross_entropy(scale · (cos(pred, cols) − margin · onehot(pos)), pos)``.

    The true answer must beat every other candidate by ``margin`` in cosine before its logit wins,
    which spreads the answers further apart than plain InfoNCE. ``batch.pred [b, D]``,
    ``batch.cols [K, D]``, ``batch.pos [b]`` (the column of each true answer)."""

    #: ranks the true answer against the other columns: the strategy mines negatives for it
    uses_negatives = True

    def __init__(self, scale: float = 20.0, margin: float = 0.2):
        self.scale, self.margin = float(scale), float(margin)

    def __call__(self, batch) -> torch.Tensor:
        cos = F.normalize(batch.pred, dim=-1) @ F.normalize(batch.cols, dim=-1).T  # [b, K]
        logits = self.scale * (cos - self.margin * F.one_hot(batch.pos, cos.shape[1]).to(cos.dtype))
        return F.cross_entropy(logits, batch.pos)


def build_residual_tanh(cfg, ctx) -> ResidualTanhCell:
    """Factory of the ``residual-tanh`` cell (``ctx.channels``: the lattice's C)."""
    return ResidualTanhCell(ctx.channels, cfg.hidden, cfg.scale)


def build_cosine_margin(cfg, ctx) -> CosineMarginLoss:
    """Factory of the ``cosine-margin`` loss."""
    return CosineMarginLoss(cfg.scale, cfg.margin)
