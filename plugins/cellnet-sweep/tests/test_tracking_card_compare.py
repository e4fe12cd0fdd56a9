"""Trackers read back with their own readers; the model card; cellnet card; cellnet compare."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from cellnet_core.errors import CellnetError


def test_tensorboard_events_read_back(tracked_run):
    pytest.importorskip("tensorboard", reason="the tensorboard tracker needs: pip install 'cellnet-sweep[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tracked_run["run"] / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0,
                                                                                    "images": 0})
    acc.Reload()
    tags = acc.Tags()
    mrr = [(e.step, e.value) for e in acc.Scalars("val/mrr")]
    assert [s for s, _ in mrr] == [0, 1, 2, 3]
    rows = [json.loads(x) for x in (tracked_run["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [round(v, 5) for _, v in mrr] == [round(r["val_mrr"], 5) for r in rows]
    assert "train/loss" in tags["scalars"] and "final/val_mrr" in tags["scalars"]
    assert "test/run/mrr" in tags["scalars"] and "test/identity/mrr" in tags["scalars"]  # from cellnet eval
    assert "training_curves" in tags["images"]
    texts = {t for t in tags["tensors"]}
    assert {"config/text_summary", "final/text_summary", "eval/text_summary"} <= texts
    config = acc.Tensors("config_json/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config)["core.steps"] == 2


def test_mlflow_run_read_back(tracked_run):
    pytest.importorskip("mlflow", reason="the mlflow tracker needs: pip install 'cellnet-sweep[mlflow]'")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked_run["uri"])
    exp = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["core.steps"] == "2" and run.data.params["training.name"] == "dialogue"
    history = client.get_metric_history(run.info.run_id, "val_mrr")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert run.data.metrics["final_val_mrr"] == pytest.approx(tracked_run["train"]["metrics"]["val_mrr"], abs=1e-6)
    assert run.data.metrics["test_run_mrr"] == pytest.approx(tracked_run["eval"]["rows"][0]["mrr"], abs=1e-6)
    assert "val_recall_at_1" in run.data.metrics  # '@' is not allowed in MLflow names
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "final_metrics.md", "eval.md", "eval.json"} <= artifacts


def test_csv_tracker_files(tracked_run):
    import csv

    folder = tracked_run["run"] / "tracking"
    epochs = list(csv.DictReader((folder / "epochs.csv").open()))
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2, 3] and "val_mrr" in epochs[0]
    assert {r["key"] for r in csv.DictReader((folder / "config.csv").open())} >= {"core.steps", "training.lr"}
    ev = list(csv.DictReader((folder / "eval.csv").open()))
    assert [r["name"] for r in ev] == ["run", "identity", "ridge"]


def test_an_unknown_tracker_lists_the_available_ones(plugins):
    from cellnet_core import api
    from cellnet_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tracking\[1\]: unknown 'tensorbord'; available: csv, mlflow, "
                                          r"tensorboard; did you mean 'tensorboard'\?"):
        api.load_config({"data": {"name": "greetings"}, "encoder": {"name": "hashing"},
                         "tracking": ["csv", "tensorbord"]}, plugins=plugins)


def test_a_missing_tracker_package_names_the_install_command():
    from cellnet_core.errors import MissingDependencyError

    from cellnet_sweep.tracking import _require

    with pytest.raises(MissingDependencyError, match=r"pip install 'cellnet-sweep\[mlflow\]'"):
        _require("no_such_module_for_cellnet_tests", "mlflow")


def test_model_card_after_train_and_eval(tracked_run, plugins):
    from cellnet_core import api

    text = (tracked_run["run"] / "README.md").read_text()
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "cellnet" and meta["datasets"] == ["pairs"] and "license" in meta
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["mrr"] == pytest.approx(tracked_run["eval"]["rows"][0]["mrr"], abs=1e-4)
    for heading in ("## Components", "## Data", "## Training", "## Validation curve", "## Test results",
                    "## Limits", "## Licence"):
        assert heading in body
    assert "| reshaper | `surface` |" in body and "| train | 168 |" in body
    assert "| identity |" in body and "paired-bootstrap" in body
    # the run still loads and verifies with the card, eval.json and the trackers' files beside it
    pipe = api.load_run(tracked_run["run"], plugins=plugins, warn=False)
    assert pipe.answer(["a1 a2 a3"])[0].text is not None


def test_card_command_regenerates(tracked_run, capsys, monkeypatch):
    from cellnet_sweep.commands import configure_card, run_card

    monkeypatch.chdir(tracked_run["dir"])  # the run's data file is named relative to where it was trained

    card = tracked_run["run"] / "README.md"
    before = card.read_text()
    card.unlink()
    p = argparse.ArgumentParser()
    configure_card(p)
    assert run_card(p.parse_args([str(tracked_run["run"])])) == 0
    assert card.read_text() == before
    with pytest.raises(CellnetError, match="no such run directory"):
        run_card(p.parse_args([str(tracked_run["dir"] / "nowhere")]))


def test_compare_two_runs(tracked_run, plugins, tmp_path, capsys):
    from cellnet_core import api

    from cellnet_sweep.commands import configure_compare, run_compare

    other = tracked_run["dir"] / "run-lr"
    if not other.exists():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CELLNET_CACHE_DIR", str(tracked_run["dir"] / "cache"))
            mp.chdir(tracked_run["dir"])
            api.train(tracked_run["dir"] / "base.yaml", other, overrides=["training.lr=0.003"], plugins=plugins,
                      echo=None)
    p = argparse.ArgumentParser()
    configure_compare(p)
    png = tmp_path / "curves.png"
    assert run_compare(p.parse_args([str(tracked_run["run"]), str(other), "--json", "--plot", str(png)])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == ["run", "run-lr"] and list(out["differ"]) == ["training.lr"]
    assert out["differ"]["training.lr"] == [0.01, 0.003]
    assert out["metrics"][0]["test_mrr"] == pytest.approx(tracked_run["eval"]["rows"][0]["mrr"])
    assert "test_mrr" not in out["metrics"][1]  # not evaluated
    assert png.stat().st_size > 5000
    assert run_compare(p.parse_args([str(tracked_run["run"]), str(other)])) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["config", "run", "run-lr"] and "training.lr" in text and "val_mrr" in text
    with pytest.raises(CellnetError, match="no such run directory"):
        run_compare(p.parse_args([str(tracked_run["run"]), str(tmp_path / "nope")]))
