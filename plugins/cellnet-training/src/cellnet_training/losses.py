"""Losses between predicted embeddings and an answer bank.

Every loss sees the same batch view: ``pred [b, D]`` (the pipeline's output), ``cols [K, D]`` the
candidate answers of the batch (the batch's own answers, mined hard negatives and labelled wrong
candidates, each answer once), and ``pos [b]`` the column of each row's true answer. Because each
answer text appears in ``cols`` once, an answer shared by two questions is never a false negative.

Losses are registered components (kind ``loss``): ``training.loss`` names one (``loss: infonce``),
or a weighted list of them (``[{name: infonce, weight: 1}, {name: cosine, weight: 0.5}]``), each
with its own options. A plugin adds one with ``registry.add("loss", NAME, ConfigCls, factory)``;
``factory(config, ctx)`` gets a :class:`LossContext` (the strategy's ``temperature`` and
``margin``, defaults for losses that have such an option) and returns a callable ``loss(batch: LossBatch) -> scalar tensor``. A loss that ranks the true answer
against other columns sets ``uses_negatives = True`` on what it returns, so that the strategy mines
hard negatives and adds labelled wrong candidates for it.
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


@dataclass
class LossContext:
    """What a loss factory gets besides its config: the strategy's ``temperature`` and ``margin``
    (``training.temperature`` / ``training.margin``: defaults of a loss's own options) and the
    registry."""

    temperature: float = 0.05
    margin: float = 0.2
    registry: Any = None


class BuiltinLoss(nn.Module):
    """One of the plugin's own losses (``cosine``, ``mse``, ``infonce``, ``triplet``) with its options."""

    def __init__(self, name: str, temperature: float = 0.05, margin: float = 0.2):
        super().__init__()
        self.name, self.temperature, self.margin = name, float(temperature), float(margin)
        self.uses_negatives = name in CONTRASTIVE

    def forward(self, batch: LossBatch) -> torch.Tensor:
        """The loss on ``batch`` (a scalar)."""
        return LOSSES[self.name](batch, temperature=self.temperature, margin=self.margin)

    def extra_repr(self) -> str:
        """The loss's name and the option it uses."""
        opt = {"infonce": f", temperature={self.temperature}", "triplet": f", margin={self.margin}"}
        return self.name + opt.get(self.name, "")


def _option(cfg: Any, field: str, ctx: Any, default: float) -> float:
    """The loss's own ``field`` when set, else the strategy's (``ctx.<field>``), else ``default``."""
    own = getattr(cfg, field, None)
    if own is not None:
        return float(own)
    return float(getattr(ctx, field, default))


def build_cosine(cfg, ctx=None) -> BuiltinLoss:
    """Factory of the ``cosine`` loss."""
    return BuiltinLoss("cosine")


def build_mse(cfg, ctx=None) -> BuiltinLoss:
    """Factory of the ``mse`` loss."""
    return BuiltinLoss("mse")


def build_infonce(cfg, ctx=None) -> BuiltinLoss:
    """Factory of the ``infonce`` loss (temperature: its own, else the strategy's)."""
    return BuiltinLoss("infonce", temperature=_option(cfg, "temperature", ctx, 0.05))


def build_triplet(cfg, ctx=None) -> BuiltinLoss:
    """Factory of the ``triplet`` loss (margin: its own, else the strategy's)."""
    return BuiltinLoss("triplet", margin=_option(cfg, "margin", ctx, 0.2))


_BUILTIN = {"cosine": build_cosine, "mse": build_mse, "infonce": build_infonce, "triplet": build_triplet}


def build_loss(term: Any, ctx: LossContext | None = None) -> Callable[[LossBatch], torch.Tensor]:
    """Build the loss of one :class:`~cellnet_training.config.LossTerm`: through ``ctx.registry``
    when given, else through the registry entry the term was validated against (any registered
    loss, third-party ones included); a term validated without a registry is a built-in loss."""
    ctx = ctx or LossContext()
    cfg = term.config
    if ctx.registry is not None:
        return ctx.registry.build("loss", cfg, ctx)
    if term.entry is not None:
        return term.entry.resolve_factory()(cfg, ctx)
    return _BUILTIN[cfg.name](cfg, ctx)


class CombinedLoss(nn.Module):
    """Weighted sum of losses, from the config's ``loss`` field: a name, or a list of terms (the
    validated ``LossTerm`` list of a strategy config, or ``{name, weight}`` mappings).

    ``temperature`` and ``margin`` are the defaults of ``infonce`` and ``triplet`` terms that do not
    set their own; ``registry`` builds terms of any registered loss (third-party ones included).
    """

    def __init__(self, spec: Any, temperature: float = 0.05, margin: float = 0.2, *, registry: Any = None):
        super().__init__()
        from cellnet_training.config import loss_terms

        self.temperature, self.margin = temperature, margin
        ctx = LossContext(temperature=temperature, margin=margin, registry=registry)
        terms = loss_terms(spec, registry)
        self.terms = [(t.name, float(t.weight)) for t in terms]
        self.parts = nn.ModuleList()
        self._fns: list[Callable[[LossBatch], torch.Tensor]] = []
        for t in terms:
            fn = build_loss(t, ctx)
            self._fns.append(fn)
            if isinstance(fn, nn.Module):
                self.parts.append(fn)

    @property
    def names(self) -> list[str]:
        """The names of the terms."""
        return [n for n, _ in self.terms]

    @property
    def uses_negatives(self) -> bool:
        """Whether a term uses other columns than the true answer (infonce, triplet, or a loss whose
        ``uses_negatives`` is true)."""
        return any(bool(getattr(fn, "uses_negatives", False)) for fn in self._fns)

    def forward(self, batch: LossBatch) -> torch.Tensor:
        """The weighted sum of the terms on ``batch``."""
        total = batch.pred.new_zeros(())
        for (name, weight), fn in zip(self.terms, self._fns):
            if weight:
                total = total + weight * fn(batch)
        return total
