"""Fixtures: a tiny lattice config that trains in seconds with parts of the installed plugins
(hashing teacher, a 4×4×2 lattice, a generated word-mapping pairs file), runs trained from it."""

from __future__ import annotations

import pytest

TINY = """seed: 0
data: {name: pairs, path: wordmap.jsonl, val_fraction: 0.15, test_fraction: 0.15}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [4, 4, 2], channels: 4}
core: {name: lattice, cell: {name: nca, hidden: 8}, steps: 2}
decoder: {name: nearest}
training: {name: dialogue, epochs: 3, batch_size: 16, lr: 0.01, plots: true}
eval: {baselines: [identity, ridge]}
"""


def write_wordmap(folder) -> None:
    """240 pairs: three words of vocabulary A → the same words through a fixed map into vocabulary B
    (question and answer share no word: the identity baseline is near chance, a lattice can learn it)."""
    import json
    import random

    rng = random.Random(0)
    a = [f"a{i}" for i in range(24)]
    b = [f"b{i}" for i in range(24)]
    rng.shuffle(b)
    rows, seen = [], set()
    while len(rows) < 240:
        words = tuple(rng.sample(range(24), 3))
        if words in seen:
            continue
        seen.add(words)
        rows.append({"question": " ".join(a[i] for i in words), "answer": " ".join(b[i] for i in words)})
    (folder / "wordmap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="session")
def plugins():
    from cellnet_core import api

    return api.load_plugins()


@pytest.fixture
def tiny_dir(tmp_path, monkeypatch):
    """A folder holding base.yaml (the tiny config), the working directory, its own embedding cache."""
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(TINY)
    write_wordmap(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory, plugins):
    """A tiny run trained with every tracker (MLflow into its own file store), then evaluated."""
    from cellnet_core import api

    d = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLNET_CACHE_DIR", str(d / "cache"))
        mp.chdir(d)
        (d / "base.yaml").write_text(TINY)
        write_wordmap(d)
        uri = (d / "mlruns").as_uri()
        import importlib.util

        trackers = ["csv"] + [t for t in ("tensorboard",) if importlib.util.find_spec(t)]
        if importlib.util.find_spec("mlflow"):
            trackers.append("{name: mlflow, tracking_uri: '%s', experiment: tests}" % uri)
        config = api.load_config(d / "base.yaml", [f"tracking=[{', '.join(trackers)}]"], plugins=plugins)
        pipe = api.train(config, d / "run", plugins=plugins, echo=None)
        trained = dict(pipe.train_info)
        result = api.evaluate(pipe, plugins=plugins, text=False)
    return {"dir": d, "run": d / "run", "uri": uri, "train": trained, "eval": result}
