"""The ``cellnet`` command end to end on the built-in parts and the example plugin's data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cellnet_core.cli import main

from cellnet_core.testing.fakes import GREETINGS_CONFIG as CONFIG


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "greet.yaml"
    cfg.write_text(CONFIG)
    assert main(["train", str(cfg), "--run-dir", str(d / "run")]) == 0
    return d / "run"


def test_train_writes_run(trained_run):
    for f in ("config.yaml", "weights.safetensors", "manifest.json", "decoder/texts.jsonl"):
        assert (trained_run / f).exists(), f


def test_ask_answers_from_bank(trained_run, capsys):
    assert main(["ask", str(trained_run), "good morning", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    texts = {json.loads(l)["text"] for l in (trained_run / "decoder/texts.jsonl").read_text().splitlines()}
    assert out[0]["answer"] in texts and out[0]["candidates"]


def test_ask_reads_stdin(trained_run):
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "ask", str(trained_run)],
                       input="hello\nthank you\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Q: ") == 2


def test_eval_prints_metrics(trained_run, capsys):
    assert main(["eval", str(trained_run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in out["rows"]]
    assert names[:2] == ["run", "identity"] and {"recall@1", "recall@10", "mrr", "cosine"} <= set(out["rows"][0])
    by = {r["name"]: r["mrr"] for r in out["rows"]}
    for c in out["compare"]:  # one paired-bootstrap comparison per baseline, centred on the MRR difference
        lo, hi = c["ci95"]
        assert lo <= c["mrr_diff"] <= hi and c["mrr_diff"] == pytest.approx(by["run"] - by[c["baseline"]])
        assert c["verdict"] in {"better", "worse", "within noise", "same"}
    assert [c["baseline"] for c in out["compare"]] == names[1:]
    assert main(["eval", str(trained_run)]) == 0
    assert "95% paired-bootstrap interval" in capsys.readouterr().out


@pytest.mark.parametrize("victim", ["weights.safetensors", "manifest.json"])
@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_damaged_run_exit_2_names_file(trained_run, tmp_path, victim, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    target = run / victim
    if damage == "delete":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "ask", str(run), "hi"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert victim in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_user_errors_exit_2(tmp_path):
    cases = [["validate", str(tmp_path / "nope.yaml")], ["components", "--kind", "encoders"],
             ["ask", str(tmp_path / "no-run"), "hi"], ["train"]]
    for argv in cases:
        r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", *argv], capture_output=True, text=True)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr


def test_plugins_and_components(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "builtin" in out and "cellnet-example-plugin" in out
    assert main(["components", "--kind", "dataset"]) == 0
    assert "greetings" in capsys.readouterr().out


def test_schema_and_cache(tmp_path, capsys):
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert "properties" in json.loads((tmp_path / "s.json").read_text())
    assert main(["cache", "info"]) == 0
    assert main(["cache", "clear"]) == 0


def test_relative_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("greet.yaml").write_text(CONFIG)
    assert main(["train", "greet.yaml", "--run-dir", "rel/run"]) == 0
    assert main(["ask", "rel/run", "hello"]) == 0


DATA = Path(__file__).resolve().parents[1] / "plugins" / "cellnet-datasets" / "tests" / "data"


@pytest.mark.parametrize("name,key", [("pairs.jsonl", "mrr"), ("pairs.csv", "mrr"), ("selection.jsonl", "map")])
def test_eval_on_a_user_file(trained_run, capsys, name, key):
    assert main(["eval", str(trained_run), "--data", str(DATA / name), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"].endswith(name) and out["questions"] > 0
    run = out["rows"][0]
    assert run["name"] == "run" and 0.0 <= run[key] <= 1.0
