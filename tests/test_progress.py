"""Long work without a terminal prints plain progress lines; on a terminal a bar; quiet: nothing."""

from __future__ import annotations

import time

from cellnet_core.run import progress


def test_log_lines_without_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("CELLNET_QUIET", raising=False)
    monkeypatch.delenv("CELLNET_PROGRESS", raising=False)
    out = []
    for i in progress(range(5), desc="encoding 5 texts", unit="batch", log_every=0.01):
        time.sleep(0.02)
        out.append(i)
    assert out == [0, 1, 2, 3, 4]  # every item still comes through
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[0].startswith("encoding 5 texts: ") and "/5 batch (" in lines[0]
    assert lines[-1].endswith("— done") and "5/5 batch (100%)" in lines[-1]


def test_no_lines_without_log_every_or_when_quiet(monkeypatch, capsys):
    monkeypatch.delenv("CELLNET_PROGRESS", raising=False)
    for _ in progress(range(3), desc="x"):
        time.sleep(0.01)
    monkeypatch.setenv("CELLNET_QUIET", "1")
    for _ in progress(range(3), desc="y", log_every=0.001):
        time.sleep(0.01)
    assert capsys.readouterr().err == ""


def test_fast_work_prints_nothing(monkeypatch, capsys):
    monkeypatch.delenv("CELLNET_QUIET", raising=False)
    bar = progress(total=10, desc="fit", unit="step", log_every=60)
    for _ in range(10):
        bar.update(1)
    bar.set_postfix({"loss": "0.1"})
    bar.close()
    assert capsys.readouterr().err == ""
