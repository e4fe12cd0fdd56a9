"""Running sweeps: outputs, a killed sweep continued, two local workers on one study, pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

GRID = ("base: base.yaml\nsampler: grid\nseeds: 1\npruner: none\nfinal: {enabled: false}\n"
        "space:\n  core.steps: [1, 2, 3]\n  training.lr: [0.003, 0.01]\n")


def _study(d, name):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{(d / 'out' / 'study.db').resolve()}")


def _states(db):
    """The trials' states read straight from the study's SQLite file (cheap enough to poll often);
    a running trial whose two parameters are not yet both chosen reads STARTING; empty while the study is
    being created."""
    import sqlite3

    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as con:
            return [state if state != "RUNNING" or n == 2 else "STARTING" for state, n in con.execute(
                "SELECT state, (SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id) FROM trials t")]
    except sqlite3.Error:
        return []


def _points(study):
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    return done, sorted(json.dumps(t.params, sort_keys=True) for t in done)


def test_sweep_writes_table_best_config_plots_and_the_final_test(tiny_dir, plugins):
    from cellnet_sweep.sweep import load_sweep, run_sweep

    (tiny_dir / "s.yaml").write_text(
        "base: base.yaml\nset: [training.plots=false]\ntrials: 3\nseeds: 2\npruner: none\n"
        "space:\n  core.steps: {type: int, low: 1, high: 3}\n  training.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "final: {baselines: [identity, ridge]}\n")
    sweep = load_sweep(tiny_dir / "s.yaml", directory=tiny_dir / "out", plugins=plugins, echo=lambda line: None)
    summary = run_sweep(sweep)
    out = tiny_dir / "out"
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["trial", "state", "val_mrr", "std"] and len(rows) == 4
    assert "seed0" in rows[0] and "seed1" in rows[0]
    assert (out / "trials.md").read_text().startswith("| trial | state | val_mrr |")
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["core"]["steps"] == summary["best"]["params"]["core.steps"] and best["seed"] == 0
    for png in ("history.png", "importances.png", "parallel.png"):
        assert (out / png).stat().st_size > 5000, summary["plots"]
    final = (out / "final.md").read_text()
    assert "| run |" in final and "| identity |" in final and "paired-bootstrap" in final
    assert (out / "best" / "eval.json").exists() and "## Test results" in (out / "best" / "README.md").read_text()
    assert summary["final"]["rows"][0]["name"] == "run"
    # each trial trained one run per seed, kept in the sweep directory
    assert sorted(p.name for p in (out / "trials" / "0000").iterdir()) == ["seed0", "seed1"]


def test_a_killed_sweep_continues_without_losing_or_repeating_a_trial(tiny_dir):
    # trials long enough (12 epochs) that the poll below surely sees one running after two finished
    (tiny_dir / "grid.yaml").write_text(GRID.replace("seeds: 1\n", "seeds: 1\nset: [training.epochs=12]\n"))
    cmd = [sys.executable, "-m", "cellnet_core.cli", "sweep", "grid.yaml", "--dir", "out"]
    env = {**os.environ, "CELLNET_QUIET": "1"}
    proc = subprocess.Popen(cmd, cwd=tiny_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            states = _states(tiny_dir / "out" / "study.db")
            if states.count("COMPLETE") >= 2 and "RUNNING" in states:
                proc.send_signal(signal.SIGKILL)  # mid-trial: no chance to clean up
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed mid-trial"
    study = _study(tiny_dir, "grid")
    before = {t.number: (t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"}
    cut = [t.number for t in study.trials if t.state.name == "RUNNING"]
    assert len(before) >= 2 and len(cut) == 1

    r = subprocess.run(cmd, cwd=tiny_dir, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"trial(s) {cut[0]} were cut off by a kill; queued again" in r.stderr
    study = _study(tiny_dir, "grid")
    done, points = _points(study)
    assert len(done) == 6 and len(set(points)) == 6  # the whole grid, each point once
    after = {t.number: (t.params, t.value) for t in done}
    assert all(after[n] == before[n] for n in before)  # finished trials kept as they were
    interrupted = study.trials[cut[0]]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs.get("interrupted")
    retried = [t for t in done if t.system_attrs.get("failed_trial") == cut[0]]
    assert len(retried) == 1 and retried[0].params == interrupted.params
    assert "interrupted" in (tiny_dir / "out" / "trials.md").read_text()


def test_two_local_workers_share_one_study(tiny_dir):
    (tiny_dir / "grid.yaml").write_text(GRID)
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "sweep", "grid.yaml", "--dir", "out",
                        "--workers", "2", "--json"], cwd=tiny_dir, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CELLNET_QUIET": "1"})
    assert r.returncode == 0, r.stderr
    study = _study(tiny_dir, "grid")
    done, points = _points(study)
    assert len(done) == 6 and len(set(points)) == 6  # no grid point ran twice
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2 and str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}
    assert json.loads(r.stdout)["complete"] == 6


class _Trial:
    number = 7

    def __init__(self, prune_at):
        self.reported, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.reported[-1][0] >= self.prune_at


def test_the_pruner_stops_a_run_through_the_epoch_hook(tmp_path):
    from cellnet_core.run import partial_dir

    from cellnet_sweep.sweep import WATCHED, StopTrial, prune_hook

    run = tmp_path / "trials" / "0007" / "seed1"
    key = str(partial_dir(run).resolve())
    trial = _Trial(prune_at=1 * (4 + 1) + 2)
    WATCHED[key] = (trial, 1, "val_mrr", 4)  # the second seed of a 4-epoch run
    try:
        prune_hook(str(partial_dir(run)), 1, {"val_mrr": 0.4, "train_loss": 2.0})
        prune_hook(str(tmp_path / "elsewhere"), 2, {"val_mrr": 0.1})  # another run: not watched
        with pytest.raises(StopTrial):
            prune_hook(str(partial_dir(run)), 2, {"val_mrr": 0.3})
    finally:
        WATCHED.pop(key)
    assert trial.reported == [(6, 0.4), (7, 0.3)]
    assert issubclass(StopTrial, BaseException) and not issubclass(StopTrial, Exception)


def test_pruned_trials_are_recorded_as_pruned(tiny_dir, plugins):
    """A median pruner with no warm-up, where three of four trials barely learn (lr tiny)."""
    import optuna

    from cellnet_sweep.sweep import load_sweep, run_sweep

    space = {"training.lr": [0.01, 0.00001, 0.000011, 0.000012]}
    # a grid order that starts with the trial that learns: the others then fall below its curve
    seed = next(s for s in range(100) if optuna.samplers.GridSampler(space, seed=s)._all_grids[0] == (0.01,))
    (tiny_dir / "p.yaml").write_text(
        "base: base.yaml\nset: [training.epochs=3, training.plots=false, training.early_stopping=0]\nsampler: grid\n"
        f"sampler_seed: {seed}\nseeds: 1\npruner: median\npruner_startup_trials: 1\npruner_warmup_epochs: 0\n"
        "final: {enabled: false}\nspace:\n  training.lr: [0.01, 0.00001, 0.000011, 0.000012]\n")
    sweep = load_sweep(tiny_dir / "p.yaml", directory=tiny_dir / "out", plugins=plugins, echo=lambda line: None)
    summary = run_sweep(sweep)
    states = [line.split(",")[1] for line in (tiny_dir / "out" / "trials.csv").read_text().splitlines()[1:]]
    assert len(states) == 4 and set(states) <= {"complete", "pruned"}
    assert summary["complete"] == 1 and summary["pruned"] == 3
    assert "pruned (seed 0)" in (tiny_dir / "out" / "trials.md").read_text()
    # a pruned trial leaves no half-made run behind
    assert not list((tiny_dir / "out" / "trials").glob("*/.*.partial"))
