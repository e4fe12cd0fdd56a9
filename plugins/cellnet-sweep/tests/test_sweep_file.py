"""Sweep files: what is accepted, and one line naming the bad field (exit 2) for what is not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cellnet_core.errors import ConfigError


def _sweep(tiny_dir, body: str, name: str = "s.yaml"):
    p = tiny_dir / name
    p.write_text("base: base.yaml\n" + body)
    return p


def test_a_good_file_is_read_with_its_defaults(tiny_dir, plugins):
    from cellnet_sweep.space import check_space, grid_size, read_sweep

    p = _sweep(tiny_dir, "space:\n  core.steps: {type: int, low: 1, high: 3}\n  core.cell.name: [nca, mlp]\n"
                         "  training.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nseeds: 3\n")
    s = read_sweep(p)
    assert s.sampler == "tpe" and s.seeds == 3 and s.metric == "val_mrr" and s.pruner == "median"
    assert [type(v).__name__ for v in s.space.values()] == ["IntParam", "ChoiceParam", "FloatParam"]
    base = check_space(s, p, plugins.registry)
    assert base["core"]["steps"] == 2
    g = _sweep(tiny_dir, "sampler: grid\nspace:\n  core.steps: {type: int, low: 1, high: 3}\n  core.cell.name: [nca, mlp]\n",
               "g.yaml")
    assert grid_size(read_sweep(g)) == 6


@pytest.mark.parametrize("body, message", [
    ("space: {}\n", r"s\.yaml: space: empty"),
    ("space:\n  core.stepz: {type: int, low: 1, high: 3}\n", r"s\.yaml: space\.core\.stepz: not a config path"),
    ("space:\n  cor.steps: [1, 2]\n", r"s\.yaml: space\.cor\.steps: not a config path"),
    ("space:\n  core.steps: {type: int, low: 5, high: 2}\n", r"s\.yaml: space\.core\.steps: bad range: low \(5\) "
                                                             r"must be below high \(2\)"),
    ("space:\n  training.lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
     r"s\.yaml: space\.training\.lr: bad range: a log range needs low > 0"),
    ("space:\n  core.steps: {type: int, low: 1, high: 100000}\n", r"s\.yaml: space\.core\.steps: value 100000: "),
    ("space:\n  core.cell.name: [nca, nac]\n", r"s\.yaml: space\.core\.cell\.name: value 'nac': .*did you mean 'nca'"),
    ("space:\n  core.steps: {type: int, low: 1, hihg: 3}\n", r"s\.yaml: space\.core\.steps\.hihg: unknown field"),
    ("space:\n  core.steps: {type: range, low: 1, high: 3}\n", r"s\.yaml: space\.core\.steps: expected a list"),
    ("space:\n  core.steps: [1, 2]\nsampler: random\n", r"s\.yaml: sampler: "),
    ("space:\n  core.steps: [1, 2]\nseeds: 0\n", r"s\.yaml: seeds: "),
    ("space:\n  core.steps: [1, 2]\nmetric: test_mrr\n", r"s\.yaml: metric: "),
    ("space:\n  training.lr: {type: float, low: 0.001, high: 0.01}\nsampler: grid\n",
     r"s\.yaml: space\.training\.lr: the grid sampler needs values"),
])
def test_bad_files_name_the_bad_field(tiny_dir, plugins, body, message):
    from cellnet_sweep.space import check_space, read_sweep

    p = _sweep(tiny_dir, body)
    with pytest.raises(ConfigError, match=message) as err:
        check_space(read_sweep(p), p, plugins.registry)
    assert "\n" not in str(err.value)


def test_a_bad_base_is_reported_with_its_own_path(tiny_dir, plugins):
    from cellnet_sweep.space import check_space, read_sweep

    p = tiny_dir / "s.yaml"
    p.write_text("base: nowhere.yaml\nspace:\n  core.steps: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: base: no such file"):
        check_space(read_sweep(p), p, plugins.registry)


def test_the_command_exits_2_with_one_line(tiny_dir):
    p = _sweep(tiny_dir, "space:\n  core.stepz: [1, 2]\n")
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "sweep", str(p)], capture_output=True, text=True,
                       timeout=120, cwd=tiny_dir)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and "space.core.stepz: not a config path" in lines[0], r.stderr


def test_trial_config_drops_fields_the_new_part_does_not_take(tiny_dir, plugins):
    import yaml

    from cellnet_sweep.space import fit_config, trial_config
    from cellnet_sweep.tracking import flatten

    base = yaml.safe_load((tiny_dir / "base.yaml").read_text())
    cfg = fit_config(plugins.registry, trial_config(base, {"core.cell.name": "mlp", "core.steps": 3}, seed=4))
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["core.cell.name"] == "mlp" and flat["core.steps"] == 3 and flat["seed"] == 4
    # a path the sweep sets is never dropped: a typo there stays an error
    with pytest.raises(ConfigError, match="core.cell.hiddn"):
        fit_config(plugins.registry, trial_config(base, {"core.cell.hiddn": 3}), protect={"core.cell.hiddn": 0})


def test_an_unknown_final_baseline_is_refused_before_any_trial(tiny_dir, plugins):
    from cellnet_sweep.sweep import load_sweep

    p = _sweep(tiny_dir, "space:\n  core.steps: [1, 2]\nfinal: {baselines: [identity, bogus]}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: final\.baselines: unknown 'bogus'; available: .*identity.*ridge"):
        load_sweep(p, plugins=plugins)
    assert not (tiny_dir / "sweeps").exists()  # nothing created


def test_the_example_sweep_files_load(plugins):
    from pathlib import Path

    from cellnet_sweep.sweep import load_sweep

    files = sorted((Path(__file__).resolve().parents[3] / "sweeps").glob("*.yaml"))
    assert files, "the repository ships example sweep files in sweeps/"
    for f in files:
        s = load_sweep(f, plugins=plugins, directory=Path("unused"))
        assert s.trials >= 1 and s.spec.space
