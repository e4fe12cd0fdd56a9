"""The context strategy: inputs are the last k turns (zeros in front of short conversations), the
untrained start is the identity of the last turn, training learns what only an earlier turn
tells, resume is exact; its baselines start at the last turn and train through the same Engine."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from pydantic import Field

from cellnet_core import hookimpl
from cellnet_core.config import ComponentConfig
from cellnet_core.errors import ConfigError, DataError
from cellnet_core.interfaces import Pair

D = 48
FAST = {"epochs": 4, "batch_size": 32, "lr": 1e-2, "early_stopping": 0, "plots": False, "fit_decoder": False}


@dataclass
class Item:
    turns: list[str]
    answer: str
    group: str = ""


class FakeChatConfig(ComponentConfig):
    """Config of the fake conversation dataset."""

    name: Literal["fake-chat"] = "fake-chat"
    n: int = Field(300, ge=12, le=378, description="conversations")


class FakeChat:
    """Named fake conversations ``[a-words, filler, b-words]``: the answer maps the *first* turn's
    words through a fixed bijection; the latest turn is one of three fillers, so it alone says
    nothing about the answer. Every fifth conversation starts at the filler (no earlier turn)."""

    FILLERS = ("and then", "what next", "go on")

    def __init__(self, n: int = 300):
        rng = random.Random(0)
        a = [f"a{i}" for i in range(28)]
        b = [f"b{i}" for i in range(28)]
        rng.shuffle(b)
        m = dict(zip(a, b))
        if n > len(a) * (len(a) - 1) // 2:
            raise ValueError(f"fake-chat: at most {len(a) * (len(a) - 1) // 2} distinct conversations")
        items, seen = [], set()
        while len(items) < n:
            ws = tuple(sorted(rng.sample(a, 2)))  # unordered: no two answers are the same bag of words
            if ws in seen:
                continue
            seen.add(ws)
            first, filler = " ".join(ws), rng.choice(self.FILLERS)
            history = [filler] if len(items) % 5 == 4 else [first, filler]
            items.append(Item(history, " ".join(m[w] for w in ws), str(len(items))))
        n_tr, n_va = int(0.7 * n), int(0.15 * n)
        self._items = {"train": items[:n_tr], "val": items[n_tr:n_tr + n_va], "test": items[n_tr + n_va:]}

    def context(self, split: str, turns: int | None = None) -> list[Item]:
        k = turns or 3
        return [Item(list(it.turns[-k:]), it.answer, it.group) for it in self._items[split]]

    def pairs(self, split: str) -> list[Pair]:
        return [Pair(it.turns[-1], it.answer, it.group) for it in self._items[split]]

    def texts(self, split: str) -> list[str]:
        return [t for it in self._items[split] for t in (*it.turns, it.answer)]


class ChatPlugin:
    @hookimpl
    def cellnet_register_components(self, registry) -> None:
        registry.add("dataset", "fake-chat", FakeChatConfig, lambda cfg, ctx: FakeChat(cfg.n),
                     summary="fake conversations for the context strategy's tests")


@pytest.fixture(scope="module")
def chat_reg():
    from cellnet_training.testing import fake_registry

    return fake_registry({"fake-chat": ChatPlugin()})[1]


@pytest.fixture
def make_context(chat_reg, tmp_path, monkeypatch):
    """``make(training, **sections) -> (pipeline, data, strategy, run factory)`` on the fake chat."""
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    from cellnet_core.config import validate_run_config
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext

    def make(training: dict, **sections):
        cfg = {"schema_version": 1, "seed": 0, "device": "cpu", "data": {"name": "fake-chat"},
               "encoder": {"name": "hashing", "dim": D, "ngrams": 1},
               "reshaper": {"name": "context-planes", "shape": [4, 4, 3], "channels": 3, "slots": 3},
               "core": {"name": "lattice", "cell": {"name": "mlp", "hidden": 32}, "steps": 2, "boundary": "walls",
                        "kernel": "reference"},
               "decoder": {"name": "nearest"}, "training": {"name": "context", **FAST, **training}}
        cfg.update(sections)
        run_cfg = validate_run_config(chat_reg, cfg, source="test")
        pipe = Pipeline.build(run_cfg, chat_reg, cache_dir=tmp_path / "cache")
        data = chat_reg.build("dataset", run_cfg.data)
        return pipe, data, chat_reg.build("strategy", run_cfg.training), \
            lambda name="run", **kw: RunContext(tmp_path / name, seed=0, **kw)

    return make


def test_inputs_are_the_last_turns_with_zeros_in_front():
    from cellnet_training.context import context_inputs, pack_turns

    e = [torch.full((4,), float(i + 1)) for i in range(5)]
    assert pack_turns(e, 3, 4).tolist() == [3.0] * 4 + [4.0] * 4 + [5.0] * 4  # the last 3, oldest first
    assert pack_turns(e[:1], 3, 4).tolist() == [0.0] * 8 + [1.0] * 4  # short: zeros in front
    items = [Item(["x", "y"], "z"), Item(["y"], "z")]
    enc = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([0.0, 1.0])}
    got = context_inputs(lambda ts: torch.stack([enc[t] for t in ts]), items, 3)
    assert got.tolist() == [[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1]]


def test_untrained_start_is_the_last_turn_and_training_uses_the_earlier_one(make_context):
    from cellnet_training.context import LastTurn, context_sets
    from cellnet_training.engine import ModuleModel, ranking_metrics, predict

    pipe, data, strategy, run = make_context({})
    train, val, answers = context_sets(pipe, data, strategy.cfg, 3)
    assert train.q.shape == (210, 3 * D) and val.q.shape == (45, 3 * D)
    assert train.q[:, :D].abs().sum() == 0  # two-turn conversations: the first slot is empty
    last = ranking_metrics(predict(ModuleModel(LastTurn(D)), val.q), val.bank, val.pos)
    with torch.no_grad():  # the untrained start is the identity of the last turn
        torch.testing.assert_close(pipe.think(val.q), val.q[:, -D:], rtol=1e-5, atol=1e-5)
    ctx = run()
    result = strategy.fit(pipe, data, ctx)
    rows = ctx.read_metrics()
    # the filler alone says nothing: the last turn and the untrained start rank near chance
    assert last["mrr"] < 0.1 and rows[0]["val_mrr"] < 0.1
    assert result.metrics["val_mrr"] > last["mrr"] + 0.15, (result.metrics["val_mrr"], last["mrr"])
    assert result.metrics["train_pairs"] == 210.0


def test_kill_and_resume_matches_uninterrupted(make_context):
    from cellnet_training.engine import TrainingInterrupted

    training, small = {"epochs": 3, "hard_negatives": 2, "early_stopping": 2}, {"name": "fake-chat", "n": 120}
    pipe, data, strategy, run = make_context(training, data=small)
    full = strategy.fit(pipe, data, run("full"))
    want = {k: v.clone() for k, v in pipe.state_tensors().items()}
    pipe, data, strategy, run = make_context(training, data=small)
    ctx = run("killed")
    ctx.extras["stop_after_epoch"] = 1
    with pytest.raises(TrainingInterrupted):
        strategy.fit(pipe, data, ctx)
    pipe, data, strategy, run = make_context(training, data=small)
    resumed = strategy.fit(pipe, data, run("killed", resume=True))
    assert resumed.metrics["val_mrr"] == pytest.approx(full.metrics["val_mrr"], abs=1e-9)
    for k, v in pipe.state_tensors().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)


def test_baselines_start_at_the_last_turn_and_train_through_the_engine(make_context, tmp_path):
    from cellnet_core.run import RunContext
    from cellnet_training.config import ContextConfig
    from cellnet_training.context import ContextMLP, LastTurn, context_sets, mlp_hidden_for
    from cellnet_training.engine import Engine, ModuleModel

    pipe, data, strategy, _ = make_context({})
    train, val, _ = context_sets(pipe, data, strategy.cfg, 3)
    target = sum(p.numel() for p in pipe.parameters())
    hidden = mlp_hidden_for(target, 3, D)
    mlp = ContextMLP(3, D, hidden)
    n = sum(p.numel() for p in mlp.parameters())
    assert abs(n - target) <= 3 * D + D + 1  # equal size: within one hidden unit
    torch.testing.assert_close(mlp(val.q), LastTurn(D)(val.q), rtol=0, atol=0)
    cfg = ContextConfig(**FAST)
    engine = Engine(cfg, label="context-mlp")
    result = engine.fit(ModuleModel(mlp), train, val, RunContext(tmp_path / "mlp", seed=0))
    rows = RunContext(tmp_path / "mlp", seed=0).read_metrics()
    assert result.metrics["val_mrr"] > rows[0]["val_mrr"] + 0.15
    assert sum(p.numel() for p in LastTurn(D).parameters()) == 0


def test_the_last_only_mlp_ignores_the_earlier_turns(make_context):
    from cellnet_training.context import ContextMLP, LastTurn, context_sets

    pipe, data, strategy, _ = make_context({})
    _, val, _ = context_sets(pipe, data, strategy.cfg, 3)
    torch.manual_seed(0)
    mlp = ContextMLP(3, D, 8, last_only=True)
    assert mlp.fc1.in_features == D
    torch.testing.assert_close(mlp(val.q), LastTurn(D)(val.q), rtol=0, atol=0)  # starts at the last turn
    torch.nn.init.normal_(mlp.fc2.weight)
    changed = val.q.clone()
    changed[:, :-D] = torch.randn_like(changed[:, :-D])  # other earlier turns, same last turn
    torch.testing.assert_close(mlp(changed), mlp(val.q), rtol=0, atol=0)
    assert not torch.allclose(mlp(val.q), LastTurn(D)(val.q))


def test_a_dataset_without_conversations_is_a_data_error(make_context):
    pipe, data, strategy, run = make_context({}, data={"name": "fake-wordmap"})
    with pytest.raises(DataError, match="training 'context': dataset .* has no conversations"):
        strategy.fit(pipe, data, run())


def test_the_reshaper_must_take_the_turns(make_context):
    with pytest.raises(ConfigError, match="test: training: strategy 'context' feeds the last turns .* reshaper "
                                          "'flat' takes one embedding"):
        make_context({}, reshaper={"name": "flat", "shape": [4, 3, 1], "channels": 4},
                     core={"name": "tiny-test-core"})
    with pytest.raises(ConfigError, match="training: turns: 2 turns per question, but reshaper.slots is 3"):
        make_context({"turns": 2})


def test_answer_with_previous_turns(make_context):
    """``Pipeline.answer(texts, context=…)`` packs the previous turns as the strategy does: untrained it
    answers as the latest turn alone; trained, the earlier turn decides the answer."""
    pipe, data, strategy, run = make_context({"fit_decoder": True})
    strategy.fit(pipe, data, run())
    item = next(it for it in data.context("train") if len(it.turns) == 2)
    shared = pipe.answer([item.turns[-1]], context=item.turns[:-1])[0]
    per_text = pipe.answer([item.turns[-1], item.turns[-1]], context=[item.turns[:-1], []])
    assert per_text[0].text == shared.text and per_text[0].score == pytest.approx(shared.score)
    alone = pipe.answer([item.turns[-1]])[0]
    assert per_text[1].text == alone.text  # no previous turns: the latest turn alone
    # the trained lattice answers from the earlier turn: other first turns, other answers
    others = [it for it in data.context("train") if len(it.turns) == 2][:8]
    got = {pipe.answer([it.turns[-1]], context=it.turns[:-1])[0].text for it in others}
    assert len(got) > 4
    with pytest.raises(ValueError, match="context: 1 histories for 2 texts"):
        pipe.answer(["a", "b"], context=[["x"]])


def test_answer_with_context_needs_a_reshaper_with_slots(make_run):
    pipe, data, strategy, run = make_run({"name": "dialogue", "epochs": 0, "plots": False})
    strategy.fit(pipe, data, run())
    with pytest.raises(ConfigError, match="takes one turn"):
        pipe.answer(["hello"], context=["hi"])
    assert len(pipe.answer(["hello"], context=None)) == 1


def test_ask_takes_previous_turns_in_order():
    from cellnet_core.cli import build_parser

    args = build_parser().parse_args(["ask", "--context", "first", "--context", "second", "runs/chat", "and you?"])
    assert args.context == ["first", "second"] and args.texts == ["and you?"]
    assert build_parser().parse_args(["ask", "runs/chat", "hi"]).context is None
