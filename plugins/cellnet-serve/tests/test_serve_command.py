"""``cellnet serve`` as a process: it binds, serves, refuses bad options in one line (exit 2) and, on
SIGTERM, answers the requests in flight before it exits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cellnet_serve", *args]


def _env(tiny_run) -> dict[str, str]:
    return {**os.environ, "CELLNET_CACHE_DIR": str(tiny_run.parent / "cache"), "CELLNET_API_KEY": ""}


def test_serve_is_a_cellnet_command(tmp_path, capsys):
    from cellnet_core import hookspecs
    from cellnet_core.cli import build_parser, main

    if not hasattr(hookspecs, "cellnet_register_commands"):
        pytest.skip("this cellnet-core has no cellnet_register_commands hook: plugins cannot add commands")
    p = build_parser()
    args = p.parse_args(["serve", "runs/x", "--port", "0", "--max-batch", "4", "--repeat-penalty", "0.2"])
    assert args.run_dir == "runs/x" and args.max_batch == 4 and args.repeat_penalty == 0.2
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such run directory"


@pytest.mark.parametrize("argv, message", [
    (["--host", "0.0.0.0"], "error: serve: binding 0.0.0.0 (not a loopback address) needs an API key"),
    (["--max-batch", "0"], "error: serve: max_batch must be at least 1, got 0"),
])
def test_bad_options_exit_2_in_one_line(tiny_run, argv, message):
    r = subprocess.run(_serve_cmd(str(tiny_run), *argv), capture_output=True, text=True, env=_env(tiny_run),
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == r.stderr.strip().splitlines()[0] and r.stderr.startswith(message), r.stderr


def test_a_port_in_use_exits_2_in_one_line(tiny_run):
    from cellnet_serve.command import bind

    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        r = subprocess.run(_serve_cmd(str(tiny_run), "--port", str(port)), capture_output=True, text=True,
                           env=_env(tiny_run), timeout=120)
    finally:
        taken.close()
    assert r.returncode == 2 and r.stderr.strip() == f"error: serve: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_missing_run_exits_2(tmp_path):
    r = subprocess.run(_serve_cmd(str(tmp_path / "nope")), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run directory"


def _read_port(proc) -> int:
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"at http://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError("the server never said where it listens")


def _get(url: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_sigterm_drains_requests_in_flight(tiny_run):
    # a long batch window keeps the request in flight while SIGTERM arrives
    proc = subprocess.Popen(_serve_cmd(str(tiny_run), "--port", "0", "--max-wait-ms", "1500", "--log-level", "warning"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env(tiny_run))
    try:
        base = f"http://127.0.0.1:{_read_port(proc)}"
        deadline = time.time() + 60
        while _get(base + "/readyz")[0] != 200:
            assert time.time() < deadline, "never ready"
            time.sleep(0.1)
        got: dict = {}

        def ask() -> None:
            req = urllib.request.Request(base + "/v1/answer", data=json.dumps({"question": "hello"}).encode(),
                                         headers={"content-type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as r:
                got.update(status=r.status, body=json.loads(r.read()), seconds=time.perf_counter() - t0)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.4)  # the request waits in its batch window
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert got.get("status") == 200 and got["body"]["answers"][0]["answer"], got
        assert got["seconds"] > 1.0  # it was in flight when the signal came
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
