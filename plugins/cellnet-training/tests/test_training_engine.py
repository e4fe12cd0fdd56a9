"""Training loop behaviour on the named fakes (hashing teacher, tiny test core, word-map data)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cellnet_core.errors import CellnetError

FAST = {"epochs": 3, "batch_size": 32, "lr": 3e-3, "early_stopping": 0, "plots": False}


def test_training_changes_weights_and_improves_val_mrr(make_run):
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "plots": True})
    before = {k: v.clone() for k, v in pipe.state_tensors().items()}
    ctx = run()
    result = strategy.fit(pipe, data, ctx)
    rows = ctx.read_metrics()
    assert rows[0]["epoch"] == 0 and [r["epoch"] for r in rows[1:]] == [1, 2, 3]
    assert result.metrics["val_mrr"] > rows[0]["val_mrr"] + 0.05
    assert any(not torch.equal(before[k], v) for k, v in pipe.state_tensors().items())
    assert (ctx.run_dir / "training_curves.png").stat().st_size > 1000
    assert (ctx.run_dir / "best.safetensors").exists()
    # the decoder was fitted on the training answers: a training question decodes to an answer text
    train_answers = {p.answer for p in data.pairs("train")}
    assert set(pipe.decode(pipe.think(pipe.encode([data.pairs("train")[0].question])))) <= train_answers


def _final(pipe, result):
    return {k: round(v, 6) for k, v in result.metrics.items() if k.startswith("val_")}, \
        {k: v.clone() for k, v in pipe.state_tensors().items()}


def test_kill_and_resume_matches_uninterrupted(make_run):
    loss = [{"name": "triplet", "weight": 1}, {"name": "cosine", "weight": 0.5}, {"name": "infonce", "weight": 0.5}]
    from cellnet_training.engine import TrainingInterrupted

    training = {"name": "dialogue", **FAST, "loss": loss, "hard_negatives": 3, "schedule": "plateau",
                "early_stopping": 3}
    pipe, data, strategy, run = make_run(training)
    full = strategy.fit(pipe, data, run("full"))
    want_metrics, want_weights = _final(pipe, full)

    pipe, data, strategy, run = make_run(training)
    ctx = run("killed")
    ctx.extras["stop_after_epoch"] = 2
    with pytest.raises(TrainingInterrupted):
        strategy.fit(pipe, data, ctx)
    # a fresh process: rebuild everything, resume from the run directory
    pipe, data, strategy, run = make_run(training)
    resumed = strategy.fit(pipe, data, run("killed", resume=True))
    got_metrics, got_weights = _final(pipe, resumed)
    assert got_metrics == want_metrics
    for k in want_weights:
        torch.testing.assert_close(got_weights[k], want_weights[k], rtol=0, atol=0)
    rows = [json.loads(x) for x in (run("killed").run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(0, full.epochs + 1))


def test_kill_inside_an_epoch_hook_then_resume(make_run, fake_reg):
    """A crash after epoch 2 was logged but before its checkpoint: resume redoes epoch 2."""
    from cellnet_core import hookimpl

    class Crash:
        @hookimpl
        def cellnet_on_epoch_end(self, run_dir, epoch, metrics):
            if epoch == 2:
                raise KeyboardInterrupt("simulated kill")  # a kill; observer faults are skipped

    training = {"name": "curriculum", **FAST, "loss": "infonce"}
    pipe, data, strategy, run = make_run(training)
    want_metrics, want_weights = _final(pipe, strategy.fit(pipe, data, run("full")))

    pm, _ = fake_reg
    crash = Crash()
    pm.register(crash, name="crash")
    try:
        pipe, data, strategy, run = make_run(training)
        with pytest.raises(KeyboardInterrupt, match="simulated kill"):
            strategy.fit(pipe, data, run("killed", hook=pm.hook))
    finally:
        pm.unregister(crash)
    pipe, data, strategy, run = make_run(training)
    got_metrics, got_weights = _final(pipe, strategy.fit(pipe, data, run("killed", resume=True, hook=pm.hook)))
    assert got_metrics == want_metrics
    for k in want_weights:
        torch.testing.assert_close(got_weights[k], want_weights[k], rtol=0, atol=0)
    epochs = [r["epoch"] for r in run("killed").read_metrics()]
    assert epochs == [0, 1, 2, 3]


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(make_run):
    from cellnet_training.engine import TrainingDivergedError

    # 112 training pairs / 32 = 4 steps per epoch, one forward per step + one per validation;
    # the fake core returns NaN from its 9th call on: epoch 2, step 3
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST}, core={"name": "tiny-test-core",
                                                                           "poison_after": 9})
    ctx = run()
    with pytest.raises(TrainingDivergedError, match=r"training.loss became nan at epoch 2.*last good checkpoint \(epoch 1\)"):
        strategy.fit(pipe, data, ctx)
    assert issubclass(TrainingDivergedError, CellnetError)
    state = ctx.load_state()
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_autoencoder_distill_and_decoder_strategies_run(make_run):
    pipe, data, strategy, run = make_run({"name": "autoencoder", **FAST, "epochs": 2})
    r = strategy.fit(pipe, data, run("ae"))
    assert r.metrics["val_recall@1"] > 0.5  # reconstruction of the question/answer texts
    pipe, data, strategy, run = make_run({"name": "distill", **FAST, "epochs": 4, "lr": 1e-2, "teachers": [
        {"encoder": {"name": "hashing", "dim": 32, "ngrams": 1}, "weight": 1.0},
        {"encoder": {"name": "hashing", "dim": 48, "ngrams": 2}, "weight": 0.5}]})
    r = strategy.fit(pipe, data, run("distill"))
    assert r.metrics["val_mrr"] > r.history[0]["val_mrr"]
    assert pipe.decoder.bank.shape[1] == 48
    pipe, data, strategy, run = make_run({"name": "decoder", "source": "both", "max_texts": 50})
    r = strategy.fit(pipe, data, run("dec"))
    assert r.metrics["texts"] == 50 and len(pipe.decoder.texts) == 50


def test_decoder_strategy_needs_fit(make_run):
    pipe, data, strategy, run = make_run({"name": "decoder"})
    pipe.decoder = object()
    with pytest.raises(CellnetError, match="needs a decoder with fit"):
        strategy.fit(pipe, data, run())


def test_sgd_cosine_schedule_and_selection_negatives(make_run):
    pipe, data, strategy, run = make_run(
        {"name": "dialogue", **FAST, "epochs": 2, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine"},
        data={"name": "fake-wordmap", "selection": True})
    from cellnet_training.strategies import pair_sets

    trainset, valset, _ = pair_sets(pipe, data, strategy.cfg)
    assert trainset.negatives is not None and (trainset.negatives >= 0).sum(1).min() >= 1
    assert not (trainset.negatives == trainset.pos[:, None]).any()
    r = strategy.fit(pipe, data, run())
    assert math.isfinite(r.metrics["val_mrr"])


def test_curriculum_competence_grows_to_all_pairs(make_run):
    pipe, data, strategy, run = make_run({"name": "curriculum", **FAST, "epochs": 10, "start_fraction": 0.2,
                                          "full_at": 0.5})
    c = [strategy.competence(e) for e in range(1, 11)]
    assert c[0] == pytest.approx(0.2) and c == sorted(c) and c[5] == 1.0 and c[-1] == 1.0
    from cellnet_training.strategies import pair_sets

    trainset, _, _ = pair_sets(pipe, data, strategy.cfg)
    eng = strategy.engine(trainset)
    first = eng.epoch_rows(1)
    easy = torch.nn.functional.cosine_similarity(trainset.q, trainset.bank[trainset.pos])
    rest = torch.ones(len(easy), dtype=torch.bool)
    rest[first] = False
    assert easy[first].min() >= easy[rest].max()  # epoch 1 trains the easiest pairs only
    assert eng.epoch_rows(10).numel() == trainset.q.shape[0]


def test_real_split_lattice_training_raises_val_mrr(fake_reg, tmp_path, monkeypatch):
    """Real data (the faq corpus' seeded split, 200 pairs), the real lattice core and volume
    reshaper; the teacher is the core's hashing encoder (a fake, to keep the test fast)."""
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    from cellnet_core.config import validate_run_config
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext

    _, reg = fake_reg
    if "faq" not in reg.names("dataset") or "lattice" not in reg.names("core"):
        pytest.skip("needs the cellnet-datasets and cellnet-lattice plugins")
    cfg = validate_run_config(reg, {
        "data": {"name": "faq", "max_pairs": 200}, "device": "cpu", "encoder": {"name": "hashing", "dim": 64},
        "reshaper": {"name": "volume", "shape": [3, 3, 2], "channels": 4},
        "core": {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 2, "kernel": "reference"},
        "training": {"name": "dialogue", "epochs": 3, "batch_size": 32, "lr": 1e-2, "early_stopping": 0,
                     "plots": False}})
    pipe = Pipeline.build(cfg, reg, cache_dir=tmp_path / "cache")
    data = reg.build("dataset", cfg.data)
    before = {k: v.clone() for k, v in pipe.state_tensors().items()}
    ctx = RunContext(tmp_path / "run", seed=0)
    result = reg.build("strategy", cfg.training).fit(pipe, data, ctx)
    init = ctx.read_metrics()[0]
    assert init["epoch"] == 0
    assert result.best_epoch > 0 and result.metrics["val_mrr"] > init["val_mrr"]
    assert any(not torch.equal(before[k], v) for k, v in pipe.state_tensors().items())


def test_bf16_autocast_on_cpu_trains(make_run):
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "epochs": 1, "mixed_precision": "bf16"})
    r = strategy.fit(pipe, data, run())
    assert math.isfinite(r.history[-1]["train_loss"])


@pytest.mark.gpu
def test_cuda_training_with_auto_mixed_precision(make_run):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST}, device="cuda")
    ctx = run()
    r = strategy.fit(pipe, data, ctx)
    assert r.metrics["val_mrr"] > ctx.read_metrics()[0]["val_mrr"]


def test_lr_scale_freezes_a_part_and_scales_another(make_run):
    from cellnet_training.engine import _param_groups

    class TwoParts:
        def __init__(self):
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def named_parts(self):
            return {"reshaper": list(self.a.parameters()), "core": list(self.b.parameters())}

    m = TwoParts()
    params = [*m.a.parameters(), *m.b.parameters()]
    groups = _param_groups(m, params, {"reshaper": 0.1})
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]
    groups = _param_groups(m, params, {"reshaper": 0.0})
    assert len(groups) == 1 and groups[0]["params"] == list(m.b.parameters())
    with pytest.raises(CellnetError, match="every trainable part is frozen"):
        _param_groups(m, params, {"reshaper": 0, "core": 0})
    # on a real run: a frozen core keeps its weights bit for bit
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "epochs": 1, "lr_scale": {"core": 0}})
    with pytest.raises(CellnetError, match="frozen|not a trainable part"):
        strategy.fit(pipe, data, run())
    with pytest.raises(Exception, match="lr_scale"):
        make_run({"name": "dialogue", **FAST, "lr_scale": {"decoder": 2}})


@pytest.mark.parametrize("loss", ["infonce", "cosine"])
def test_gradient_accumulation_is_the_update_of_the_larger_batch(make_run, loss):
    """accumulate: 4 × batch_size 8 trains the same weights as batch_size 32 (in-batch negatives too)."""
    base = {"name": "dialogue", **FAST, "epochs": 2, "loss": loss, "grad_clip": 0.0}
    pipe, data, strategy, run = make_run({**base, "batch_size": 32})
    big = strategy.fit(pipe, data, run("big"))
    want = {k: v.clone() for k, v in pipe.state_tensors().items()}
    pipe, data, strategy, run = make_run({**base, "batch_size": 8, "accumulate": 4})
    acc = strategy.fit(pipe, data, run("accumulated"))
    got = pipe.state_tensors()
    for k in want:  # float sums in another order; Adam magnifies that on near-zero gradients
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=3e-4)
    assert acc.metrics["val_mrr"] == pytest.approx(big.metrics["val_mrr"], abs=1e-5)
    # and it differs from training with the small batch alone (the test can fail)
    pipe, data, strategy, run = make_run({**base, "batch_size": 8})
    strategy.fit(pipe, data, run("small"))
    assert max(float((want[k] - v).abs().max()) for k, v in pipe.state_tensors().items()) > 1e-2
