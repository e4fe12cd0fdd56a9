"""Load test of ``cellnet serve``; writes docs/results/serve.md.

Serves a demo run on loopback (``runs/default`` when it is a complete run, else the tiny greetings
run trained into a temporary folder) in its own process, and measures against it, in one go:

1. **one at a time**: S questions, each sent after the previous answer came back (one client);
2. **concurrent**: N clients × M questions, each client sending its next question when its last
   answer came back (so N requests are in flight), the server gathering them into batches;
3. **burst**: B requests sent at once to a queue bounded below B, to show the refusals (503 with
   ``Retry-After``) and that nothing is lost (every request answered or refused).

Latency p50/p95/p99 and throughput of 1 and 2 (and their ratio), the mean batch size from the
server's ``/metrics``, the counts of answered / 503 / other errors, and the server process's
memory (RSS) after the warm-up and at the end. The questions are the run's held-out test
questions, cycled; the server keeps no embedding cache (its default), so every question is
encoded by the teacher as a new one would be. Bounded: at most ``--budget`` seconds of load.

Usage: ``.venv/bin/python bench/bench_serve.py [--quick] [--clients 16] [--questions 40]
[--screenshot docs/img/serve-chat.png]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))]


def pick_run(tmp: Path) -> tuple[Path, str]:
    """runs/default when complete, else the tiny greetings run trained into ``tmp``."""
    from cellnet_core import api

    default = ROOT / "runs" / "default"
    try:
        api.check_run_dir(default)
        return default, "runs/default (make demo)"
    except Exception as exc:  # noqa: BLE001 - fall back to a run made here
        print(f"runs/default not usable ({exc}); training the tiny greetings run", file=sys.stderr)
    from cellnet_core.testing.fakes import GREETINGS_CONFIG

    (tmp / "greet.yaml").write_text(GREETINGS_CONFIG)
    api.train(str(tmp / "greet.yaml"), tmp / "run", echo=None)
    return tmp / "run", "the tiny greetings run (hashing encoder, identity core: runs/default was missing)"


def questions_of(run: Path) -> list[str]:
    from cellnet_core import api

    plugins = api.load_plugins()
    config = api.load_config(run, plugins=plugins)
    data = plugins.registry.build("dataset", config.data, None)
    qs = list(dict.fromkeys(p.question for p in data.pairs("test")))
    return qs or ["hello", "how are you?"]


def start_server(run: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "cellnet_serve", str(run), "--port", "0", "--log-level", "warning",
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "CELLNET_API_KEY": ""})
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"at http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read()}")


async def wait_ready(client, base: str) -> float:
    t0 = time.perf_counter()
    while True:
        try:
            r = await client.get(base + "/readyz")
            if r.status_code == 200:
                return time.perf_counter() - t0
            if r.json().get("error"):
                raise SystemExit(f"the run failed to load: {r.json()['error']}")
        except Exception as exc:  # noqa: BLE001 - not listening yet
            if isinstance(exc, SystemExit):
                raise
        if time.perf_counter() - t0 > 180:
            raise SystemExit("the run did not load within 180 s")
        await asyncio.sleep(0.2)


class Tally:
    def __init__(self) -> None:
        self.lat: list[float] = []
        self.refused: list[float] = []  # seconds until a 503 came back
        self.ok = self.busy = self.errors = self.retry_after = 0
        self.other: dict[str, int] = {}

    def add(self, status: int | str, seconds: float, retry_after: bool = False) -> None:
        if status == 200:
            self.ok += 1
            self.lat.append(seconds)
        elif status == 503:
            self.busy += 1
            self.refused.append(seconds)
            self.retry_after += int(retry_after)
        else:
            self.errors += 1
            self.other[str(status)] = self.other.get(str(status), 0) + 1


async def one(client, base: str, q: str, tally: Tally) -> None:
    t0 = time.perf_counter()
    retry = False
    try:
        r = await client.post(base + "/v1/answer", json={"question": q, "k": 5})
        status: int | str = r.status_code
        retry = "retry-after" in r.headers
        if status == 200 and not r.json()["answers"]:
            status = "empty"
    except Exception as exc:  # noqa: BLE001 - counted, never lost
        status = type(exc).__name__
    tally.add(status, time.perf_counter() - t0, retry)


async def serial(client, base: str, qs: list[str], n: int, deadline: float) -> tuple[Tally, float]:
    tally = Tally()
    t0 = time.perf_counter()
    for i in range(n):
        if time.perf_counter() > deadline:
            break
        await one(client, base, qs[i % len(qs)], tally)
    return tally, time.perf_counter() - t0


async def concurrent(httpx, base: str, qs: list[str], clients: int, per: int, deadline: float) -> tuple[Tally, float, int]:
    tally = Tally()
    sent = [0]

    async def worker(c: int) -> None:
        async with httpx.AsyncClient(timeout=60) as client:  # one keep-alive connection per client
            for i in range(per):
                if time.perf_counter() > deadline:
                    return
                sent[0] += 1
                await one(client, base, qs[(c * per + i) % len(qs)], tally)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(clients)))
    return tally, time.perf_counter() - t0, sent[0]


async def burst(httpx, base: str, qs: list[str], n: int) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client, base, qs[i % len(qs)], tally) for i in range(n)))
    return tally


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(texts, forward passes) so far, from the server's /metrics."""
    def value(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+]+)$", metrics_text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("cellnet_batch_texts_sum"), value("cellnet_batch_texts_count")


def screenshot(base: str, out: Path) -> None:
    """The chat page after a short conversation (headless Chromium)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from cellnet_serve.testing import chromium

    drv = chromium(1000, 1250)
    try:
        wait = WebDriverWait(drv, 60)
        drv.get(base + "/")
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-ready") == "1")
        for i, q in enumerate(["hello, how are you?", "what is your favourite book?", "what is your favourite book?"], 1):
            drv.find_element(By.ID, "question").send_keys(q, Keys.ENTER)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn[data-state]")) >= i)
        drv.execute_script("window.scrollTo(0, 0)")
        out.parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(out))
        print(f"wrote {out}")
    finally:
        drv.quit()


async def main_async(args: argparse.Namespace) -> None:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    run, run_note = pick_run(tmp)
    qs = questions_of(run)
    proc, base = start_server(run, args)
    load0 = os.getloadavg()[0]
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            load_s = await wait_ready(client, base)
            ready = (await client.get(base + "/readyz")).json()
            warm = Tally()
            for q in qs[: args.warmup]:
                await one(client, base, q, warm)
            rss0 = rss_mib(proc.pid)
            deadline = time.perf_counter() + args.budget
            s_tally, s_wall = await serial(client, base, qs, args.serial, deadline)
            before = batch_totals((await client.get(base + "/metrics")).text)
            c_tally, c_wall, c_sent = await concurrent(httpx, base, qs, args.clients, args.questions,
                                                       time.perf_counter() + args.budget)
            after = batch_totals((await client.get(base + "/metrics")).text)
            n_batches = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / n_batches if n_batches else float("nan")
            b_tally = await burst(httpx, base, qs, args.burst)
            rss1 = rss_mib(proc.pid)
            if args.screenshot:
                try:
                    screenshot(base, Path(args.screenshot))
                except Exception as exc:  # noqa: BLE001 - the figures stand without the picture
                    print(f"no screenshot: {exc}", file=sys.stderr)
    finally:
        proc.terminate()
        rc = proc.wait(60)
    load1 = os.getloadavg()[0]

    s_tp = s_tally.ok / s_wall if s_wall else float("nan")
    c_tp = c_tally.ok / c_wall if c_wall else float("nan")
    ratio = c_tp / s_tp if s_tp else float("nan")
    lost_c = c_sent - (c_tally.ok + c_tally.busy + c_tally.errors)
    drift = (rss1 - rss0) / rss0 * 100
    ok_ratio = ratio >= 3.0
    ok_lost = c_tally.errors == 0 and b_tally.errors == 0 and lost_c == 0
    ok_mem = abs(drift) <= 10.0

    def row(name: str, t: Tally, wall: float, tp: float) -> str:
        ms = [x * 1000 for x in t.lat]
        return (f"| {name} | {t.ok + t.busy + t.errors} | {t.ok} | {t.busy} | {t.errors} | "
                f"{pct(ms, 50):.1f} | {pct(ms, 95):.1f} | {pct(ms, 99):.1f} | {tp:.1f} |")

    import torch

    lines = [
        "## Serving (cellnet-serve)",
        "",
        f"`bench/bench_serve.py`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores shared by the server and the load generator (same machine, loopback), "
        f"torch {torch.__version__}; load average {load0:.1f} before / {load1:.1f} after (other work was "
        f"running on the machine, so absolute figures are rough; both loops ran in the same run, minutes apart). "
        f"Run: {run_note}: encoder `{ready.get('encoder')}`, core `{ready.get('core')}`, decoder "
        f"`{ready.get('decoder')}`; loaded in {load_s:.1f} s. Server: `cellnet serve` (`python -m cellnet_serve`) "
        f"with --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g} --max-queue {args.max_queue}, "
        f"no embedding cache (every question encoded by the teacher). Questions: the run's {len(qs)} held-out "
        f"test questions, cycled; `k` = 5.",
        "",
        "| phase | requests | answered | 503 | errors | p50 ms | p95 ms | p99 ms | answers/s |",
        "|---|---|---|---|---|---|---|---|---|",
        row("one at a time", s_tally, s_wall, s_tp),
        row(f"{args.clients} concurrent clients × {args.questions}", c_tally, c_wall, c_tp),
        row(f"burst: {args.burst} at once, queue {args.max_queue}", b_tally, 0, float("nan")).replace("| nan |", "| - |"),
        "",
        f"- throughput, {args.clients} concurrent ÷ one at a time: **{ratio:.1f}×** (target ≥ 3×: "
        f"{'met' if ok_ratio else 'missed'}); mean batch {mean_batch:.1f} questions over the "
        f"concurrent phase's {n_batches:.0f} forward passes (one at a time: 1)",
        f"- lost requests: {lost_c + c_tally.errors + b_tally.errors} (every request answered or refused with 503: "
        f"{'yes' if ok_lost else 'no'}); the burst's {b_tally.busy} refusals came back in "
        f"{pct([x * 1000 for x in b_tally.refused], 50):.0f} ms (median; "
        f"{pct([x * 1000 for x in b_tally.refused], 99):.0f} ms p99), {b_tally.retry_after} of them with `Retry-After`, "
        f"while the answered ones waited for their batches",
        f"- server memory (RSS): {rss0:.0f} MiB after the warm-up, {rss1:.0f} MiB at the end ({drift:+.1f} %; "
        f"target within ±10 %: {'met' if ok_mem else 'missed'})",
        f"- the server exited with {rc} after SIGTERM",
    ]
    if c_tally.other or b_tally.other or s_tally.other:
        lines.append(f"- errors by kind: {json.dumps({**s_tally.other, **c_tally.other, **b_tally.other})}")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--questions", type=int, default=40, help="questions per client (default 40)")
    p.add_argument("--serial", type=int, default=120, help="questions of the one-at-a-time loop (default 120)")
    p.add_argument("--burst", type=int, default=192, help="requests of the burst (default 192)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up questions (default 10)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--budget", type=float, default=90.0, help="seconds at most per load phase (default 90)")
    p.add_argument("--quick", action="store_true", help="fewer questions (clients × 15, 40 one at a time)")
    p.add_argument("--screenshot", metavar="PNG", help="also save the chat page after a short conversation")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "serve.md"))
    args = p.parse_args()
    if args.quick:
        args.questions, args.serial = min(args.questions, 15), min(args.serial, 40)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
