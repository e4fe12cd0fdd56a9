"""Named fakes for this plugin's tests (and for anyone testing a strategy without the lattice
or dataset plugins): a tiny trainable core and a synthetic word-mapping dataset.

Neither is registered by the plugin; tests register them with :class:`FakesPlugin`.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cellnet_core import hookimpl
from cellnet_core.config import ComponentConfig
from cellnet_core.interfaces import Pair, SelectionItem


class TinyTestCoreConfig(ComponentConfig):
    """Config of the fake core used in tests."""

    name: Literal["tiny-test-core"] = "tiny-test-core"
    hidden: int = Field(16, ge=1, le=1024, description="hidden units of the per-cell MLP")
    steps: int = Field(2, ge=1, le=16, description="residual steps")
    poison_after: int = Field(0, ge=0, description="return NaN from this forward call on (0: never); NaN tests")


class TinyTestCore(nn.Module):
    """A fake core for tests: ``steps`` residual updates, each a zero-initialised linear mix of
    the whole lattice plus a per-cell MLP. Deterministic (no stochastic firing)."""

    def __init__(self, shape, channels: int, hidden: int = 16, steps: int = 2, poison_after: int = 0):
        super().__init__()
        self.shape, self.channels, self.steps, self.last_steps = tuple(shape), channels, steps, steps
        n = shape[0] * shape[1] * shape[2] * channels
        self.mix = nn.Linear(n, n)
        self.l1 = nn.Linear(channels, hidden)
        self.l2 = nn.Linear(hidden, channels)
        for layer in (self.mix, self.l2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.poison_after, self.calls = poison_after, 0

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """``field [B, X, Y, Z, C]`` → state of the same shape."""
        self.calls += 1
        s = field
        for _ in range(self.steps):
            mixed = self.mix(s.reshape(s.shape[0], -1)).reshape(s.shape)
            s = s + mixed + self.l2(torch.tanh(self.l1(s)))
        if self.poison_after and self.calls >= self.poison_after:
            s = s * float("nan")
        return s


def build_tiny_core(cfg, ctx) -> TinyTestCore:
    """Factory of ``tiny-test-core`` (shape and channels from the reshaper)."""
    r = ctx.reshaper
    return TinyTestCore(tuple(r.shape), r.channels, cfg.hidden, cfg.steps, cfg.poison_after)


class FakeWordMapConfig(ComponentConfig):
    """Config of the fake word-mapping dataset."""

    name: Literal["fake-wordmap"] = "fake-wordmap"
    n: int = Field(240, ge=12, le=100000, description="pairs in all (train 70 %, val 15 %, test 15 %)")
    seed: int = Field(0, ge=0, description="seed of the generated pairs")
    selection: bool = Field(False, description="also offer selection(split) with 3 wrong candidates")


class FakeWordMap:
    """Synthetic, named fake data: a question is three words of vocabulary A, its answer the same
    three words mapped through a fixed bijection A → B. Question and answer share no word, so
    the identity baseline is near chance and a trained map generalises to unseen combinations."""

    def __init__(self, n: int = 240, seed: int = 0, selection: bool = False):
        rng = random.Random(seed)
        a_words = [f"a{i}" for i in range(24)]
        b_words = [f"b{i}" for i in range(24)]
        rng.shuffle(b_words)
        mapping = dict(zip(a_words, b_words))
        seen, pairs = set(), []
        while len(pairs) < n:
            ws = tuple(rng.sample(a_words, 3))
            if ws in seen:
                continue
            seen.add(ws)
            pairs.append(Pair(" ".join(ws), " ".join(mapping[w] for w in ws), group=str(len(pairs))))
        n_tr, n_va = int(0.7 * n), int(0.15 * n)
        self._splits = {"train": pairs[:n_tr], "val": pairs[n_tr:n_tr + n_va], "test": pairs[n_tr + n_va:]}
        self._selection = selection
        self._rng_seed = seed

    def pairs(self, split: str) -> list[Pair]:
        """The pairs of ``split`` (train, val, test)."""
        return list(self._splits[split])

    def texts(self, split: str) -> list[str]:
        """Questions and answers of ``split``."""
        return [t for p in self._splits[split] for t in (p.question, p.answer)]

    def selection(self, split: str) -> list[SelectionItem]:
        """Each question with its answer and 3 wrong answers of the same split (``selection: true``)."""
        if not self._selection:
            raise NotImplementedError("selection is off")
        rng = random.Random(self._rng_seed + 1)
        items = []
        ps = self._splits[split]
        for p in ps:
            wrong = [q.answer for q in rng.sample(ps, 4) if q.answer != p.answer][:3]
            items.append(SelectionItem(p.question, [p.answer, *wrong], [1] + [0] * len(wrong)))
        return items


def build_fake_wordmap(cfg, ctx) -> FakeWordMap:
    """Factory of ``fake-wordmap``."""
    return FakeWordMap(cfg.n, cfg.seed, cfg.selection)


class FakesPlugin:
    """Registers the fakes above (register it beside the real plugins in tests)."""

    @hookimpl
    def cellnet_register_components(self, registry) -> None:
        """Register ``tiny-test-core`` and ``fake-wordmap``."""
        registry.add("core", "tiny-test-core", TinyTestCoreConfig, build_tiny_core,
                     summary="fake trainable core for tests (linear mix + per-cell MLP)")
        registry.add("dataset", "fake-wordmap", FakeWordMapConfig, build_fake_wordmap,
                     summary="fake synthetic word-mapping pairs for tests")


def fake_registry(extra_plugins: dict[str, object] | None = None):
    """(plugin manager, registry): real discovery plus :class:`FakesPlugin` and ``extra_plugins``."""
    from cellnet_core.plugins import collect_registry, create_plugin_manager, register_plugin

    pm = create_plugin_manager(autoload=True)
    register_plugin(pm, FakesPlugin(), "training-fakes")
    for name, plugin in (extra_plugins or {}).items():
        register_plugin(pm, plugin, name)
    return pm, collect_registry(pm)


def fake_config(training: dict, **sections) -> dict:
    """A small run config over the fakes: hashing teacher (fake, 48-d), flat reshaper, tiny core."""
    cfg = {
        "seed": 0,
        "device": "cpu",
        "data": {"name": "fake-wordmap", "n": 160},
        "encoder": {"name": "hashing", "dim": 48, "ngrams": 1},
        "reshaper": {"name": "flat", "shape": [4, 3, 1], "channels": 4},
        "core": {"name": "tiny-test-core"},
        "decoder": {"name": "nearest"},
        "training": training,
    }
    cfg.update(sections)
    return cfg
