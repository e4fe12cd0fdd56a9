"""bench/study.py: the headline table from the parts' summaries, the time budget, unknown parts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("cellnet_bench_study", ROOT / "bench" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _boot(diff, lo, hi, verdict):
    return {"diff": diff, "lo": lo, "hi": hi, "verdict": verdict}


def test_the_headline_reads_every_part_and_says_whether_the_budget_held(tmp_path):
    study = _study()
    (tmp_path / "study_squad.json").write_text(json.dumps([
        {"variant": "identity", "metric": "test MAP", "mean": 0.8739, "sd": 0.0, "seeds": 0},
        {"variant": "grid-lattice", "metric": "test MAP", "mean": 0.9051, "sd": 0.001, "seeds": 5,
         "params": {"core": 628, "readout": 660, "adapters": 0},
         "vs_identity": _boot(0.0312, 0.0221, 0.0403, "better"), "baseline": "grid-conv-small",
         "vs_baseline": _boot(0.0055, 0.0009, 0.0100, "better")}]))
    (tmp_path / "study_context.json").write_text(json.dumps([
        {"variant": "context-lattice", "metric": "test MRR", "mean": 0.0627, "sd": 0.0002, "seeds": 5,
         "params": {"lattice": 628, "adapters": 589824}, "vs_identity": _boot(0.001, 0.0004, 0.0016, "better"),
         "baseline": "context-mlp", "vs_baseline": _boot(0.0002, -0.0003, 0.0007, "same"),
         "vs_last_mlp": _boot(-0.0004, -0.0009, 0.0001, "same")}]))
    (tmp_path / "study_training.json").write_text(json.dumps([
        {"dataset": "faq", "variant": "lattice", "metric": "test MRR", "mean": 0.91, "sd": 0.013, "seeds": 5,
         "params": {"core": 1488, "adapters": 394112}, "vs_identity": _boot(0.019, -0.001, 0.045, "within noise"),
         "baseline": "mlp", "vs_baseline": _boot(0.003, -0.015, 0.02, "within noise")}]))
    text = study.render(tmp_path, {"training": 300.0, "squad": 1200.0, "context": 700.0}, ["--only", "squad"])
    assert "`.venv/bin/python bench/study.py --only squad`" in text
    assert "| **all** | | | **36.7** (within the 40-minute budget) |" in text
    assert ("| SQuAD selection | test MAP | grid-lattice | 628 · 660 | 0.9051 ± 0.0010 | "
            "+0.0312 [+0.0221, +0.0403] better | +0.0055 [+0.0009, +0.0100] better (grid-conv-small) |") in text
    assert "| SQuAD selection | test MAP | identity | 0 | 0.8739 | – | – |" in text
    assert "628 · 589,824" in text and "vs last-mlp -0.0004 [-0.0009, +0.0001] same" in text
    assert "| faq (pooled answers) | test MRR | default lattice (surface reshaper + NCA) | 1,488 · 394,112 |" in text
    assert ("- SQuAD selection: a lattice variant (grid-lattice) beats identity with an interval above 0 — **met** "
            "(+0.0312 [+0.0221, +0.0403] better); not worse than its equal-size baseline — **met** "
            "(+0.0055 [+0.0009, +0.0100] better); the stretch, identity + 0.05 = 0.9239 — **missed** (0.9051).") in text
    assert "beats the identity of the last turn with an interval above 0 — **met** (+0.0010" in text
    assert "- faq: the default lattice beats identity — **missed** (+0.0190 [-0.0010, +0.0450] within noise)" in text
    over = study.render(tmp_path, {"squad": 2500.0}, [])
    assert "(over the 40-minute budget)" in over


def test_an_unknown_part_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "study.py"), "--only", "squad,nope", "--out-dir",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "study: unknown part(s) ['nope']; available: training, squad, context"


def test_render_only_uses_the_saved_command_and_times(tmp_path):
    (tmp_path / "study_times.json").write_text(json.dumps({"command": ["--only", "context"],
                                                           "minutes": {"context": 12.5}}))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "study.py"), "--render", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert "bench/study.py --only context`" in text and "| context |" in text and "**12.5**" in text


def test_a_part_rerun_alone_is_named_beside_the_whole_command(tmp_path):
    study = _study()
    text = study.render(tmp_path, {"training": 120.0, "squad": 1300.0, "context": 560.0}, [], ["context"])
    assert "`.venv/bin/python bench/study.py` — " in text
    assert "Rerun since, alone: context (`bench/study.py --only context`)" in text
    assert "**33.0** (within the 40-minute budget)" in text
