"""The ``context`` strategy: the last k turns of a conversation → the next turn, and its baselines.

Questions are a conversation dataset's context items (``data.context(split, turns=k)``, e.g.
``chatterbot`` and ``chitchat``): the input of one item is its turns' teacher embeddings
concatenated, oldest first::

    q [N, k·D] = [e(turn_1) | … | e(turn_k)]     turn_k: the question being answered

In a conversation's first turns there are fewer than k earlier turns: the missing ones are zero
embeddings at the front, so the latest turn is always the last block. The target is the next
turn's embedding (an answer bank holding each answer once), trained by the same
:class:`~cellnet_training.engine.Engine` as ``dialogue``: same losses, negatives, optimiser,
schedule, validation (pooled ranking of the val split's answers), early stopping and resume.

k is the reshaper's ``context_slots`` (``context-planes``' ``slots``); ``training.turns`` may
repeat it and is then checked against it.

Baselines of the same task, trained through the same Engine (:class:`~cellnet_training.engine.ModuleModel`):

- :class:`LastTurn` — the identity of the last turn: predicts the latest turn's own embedding
  (no parameters; what an untrained ``context-planes`` lattice returns);
- :class:`ContextMLP` — an MLP over the concatenated turns, residual from the last turn
  (``e_k + W2·gelu(W1·q + b1) + b2`` with ``W2, b2 = 0`` at init, so it starts at :class:`LastTurn`);
  :func:`mlp_hidden_for` sizes it to a given parameter count.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from cellnet_core.errors import ConfigError, DataError
from cellnet_training.baselines import hidden_for
from cellnet_training.engine import TrainSet, ValSet
from cellnet_training.strategies import _GradientStrategy, fit_encoder_preprocessing

#: the datasets of the project that give context items (for messages)
CONVERSATION_DATASETS = ("chatterbot", "chitchat")


def context_items(data: Any, split: str, turns: int) -> list[Any]:
    """``data.context(split, turns=turns)``; :class:`DataError` for a dataset without conversations."""
    fn = getattr(data, "context", None)
    if not callable(fn):
        name = getattr(data, "name", type(data).__name__)
        raise DataError(f"training 'context': dataset '{name}' has no conversations (no context items); use a "
                        f"conversation dataset ({', '.join(CONVERSATION_DATASETS)})")
    return list(fn(split, turns=turns))


def pack_turns(turn_embs: Sequence[torch.Tensor], k: int, dim: int) -> torch.Tensor:
    """One item's turn embeddings ``[D]`` each (oldest first) → ``[k·D]``: the last ``k`` turns,
    zeros in front when there are fewer."""
    out = torch.zeros(k, dim)
    last = list(turn_embs)[-k:]
    for j, e in enumerate(last):
        out[k - len(last) + j] = e.float()
    return out.reshape(k * dim)


def context_inputs(encode: Any, items: Sequence[Any], k: int) -> torch.Tensor:
    """``[N, k·D]`` inputs of context items (each unique turn text encoded once by ``encode``)."""
    if not items:
        raise DataError("context: no items to encode")
    texts = list(dict.fromkeys(t for it in items for t in it.turns))
    emb = encode(texts).float().cpu()
    row = {t: i for i, t in enumerate(texts)}
    return torch.stack([pack_turns([emb[row[t]] for t in it.turns], k, emb.shape[1]) for it in items])


def context_answers(encode: Any, items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The answer bank of ``items`` (each next turn once): ``(bank [M, D], pos [N], texts)``."""
    texts = list(dict.fromkeys(it.answer for it in items))
    index = {t: i for i, t in enumerate(texts)}
    pos = torch.tensor([index[it.answer] for it in items], dtype=torch.long)
    return encode(texts).float(), pos, texts


def turns_for(pipeline: Any, cfg: Any) -> int:
    """k: the reshaper's ``context_slots``; ``training.turns`` must agree with it when given."""
    slots = getattr(getattr(pipeline, "reshaper", None), "context_slots", None)
    turns = getattr(cfg, "turns", None)
    if slots is None:
        name = getattr(getattr(getattr(pipeline, "config", None), "reshaper", None), "name", "?")
        raise ConfigError(f"training 'context' needs a reshaper that takes several turns (context-planes); "
                          f"reshaper '{name}' takes one embedding")
    if turns is not None and int(turns) != int(slots):
        raise ConfigError(f"training.turns: {turns} turns per question, but the reshaper has {slots} slots; "
                          f"make them equal (or leave turns out)")
    return int(slots)


def context_sets(pipeline: Any, data: Any, cfg: Any, k: int) -> tuple[TrainSet, ValSet | None, list[str]]:
    """Train and val tensors of the context items (val: at most ``cfg.max_val_questions``);
    returns the training answers (each once) too."""
    train = context_items(data, "train", k)
    if not train:
        raise DataError("training 'context': the dataset has no training context items")
    fit_encoder_preprocessing(pipeline, [t for it in train for t in (*it.turns, it.answer)])
    bank, pos, answers = context_answers(pipeline.encode, train)
    trainset = TrainSet(context_inputs(pipeline.encode, train, k), pos, bank)
    val = context_items(data, "val", k)[: int(getattr(cfg, "max_val_questions", 2000))]
    valset = None
    if val:
        vbank, vpos, _ = context_answers(pipeline.encode, val)
        valset = ValSet(context_inputs(pipeline.encode, val, k), vpos, vbank)
    return trainset, valset, answers


class ContextStrategy(_GradientStrategy):
    """The last k turns (concatenated embeddings) → the next turn's embedding."""

    label = "context"

    def prepare(self, pipeline: Any, data: Any, run: Any):
        """Training and validation tensors of the dataset's k-turn context items."""
        return context_sets(pipeline, data, self.cfg, turns_for(pipeline, self.cfg))


# -- baselines ---------------------------------------------------------------------------------------
class LastTurn(nn.Module):
    """``[B, k·D]`` → ``[B, D]``: the latest turn's embedding (no parameters)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """``q [B, k·D]`` → its last ``D`` columns."""
        return q[:, -self.dim:]


class ContextMLP(nn.Module):
    """``e_k + W2·gelu(W1·q + b1) + b2`` over ``q [B, k·D]``; ``W2, b2`` start at zero (= :class:`LastTurn`).

    ``last_only=True`` feeds ``W1`` the latest turn alone (``e_k``, not the k turns): the same mapping
    without the context, which tells what a model gains from the earlier turns apart from what it
    gains by learning a last turn → next turn mapping."""

    def __init__(self, turns: int, dim: int, hidden: int, last_only: bool = False):
        super().__init__()
        self.dim = int(dim)
        self.last_only = bool(last_only)
        self.fc1 = nn.Linear((1 if self.last_only else int(turns)) * self.dim, int(hidden))
        self.fc2 = nn.Linear(int(hidden), self.dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """``q [B, k·D]`` → ``[B, D]``: the last turn plus the learned correction."""
        last = q[:, -self.dim:]
        return last + self.fc2(nn.functional.gelu(self.fc1(last if self.last_only else q)))


def mlp_hidden_for(n_params: int, turns: int, dim: int) -> int:
    """Hidden width of the :class:`ContextMLP` closest to ``n_params`` parameters (``turns`` 1: the
    ``last_only`` one)."""
    return hidden_for(n_params, turns * dim, dim)


def build_context(cfg, ctx=None) -> ContextStrategy:
    """Factory of the ``context`` strategy."""
    return ContextStrategy(cfg)
