"""Benchmark of the lattice core: cell-steps per second of the reference kernel (and of every
other registered kernel, as a ratio to the reference measured in the same run), forward and
forward+backward, on 8³ to 32³ lattices and several batch sizes; parameter counts per cell.

    .venv/bin/python bench/bench_lattice.py [--quick]

Writes docs/results/lattice.md. One cell-step = one cell updated once (B · X·Y·Z · T per forward).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from cellnet_lattice.cells import CELLS
from cellnet_lattice.core import LatticeCore
from cellnet_lattice.topology import Topology

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "lattice.md"


def kernels_available() -> dict[str, object]:
    """The reference kernel and, when registered, the CPU ``fused`` kernel (its own benchmark
    in bench_kernels.py covers the rest)."""
    from cellnet_core.pipeline import BuildContext
    from cellnet_core.plugins import load

    _, registry = load()
    ctx = BuildContext(registry=registry, device=torch.device("cpu"))
    out = {}
    for name in ["reference"] + [n for n in registry.names("kernel") if n == "fused"]:
        try:
            out[name] = registry.build("kernel", {"name": name}, ctx)
        except Exception as exc:  # a kernel that cannot run here is reported, not fatal
            print(f"kernel {name}: not measured ({type(exc).__name__}: {exc})")
    return out


def make_core(kernel, size: int, channels: int, cell: str, hidden: int, steps: int) -> LatticeCore:
    torch.manual_seed(0)
    topo = Topology((size, size, size), "von-neumann", "periodic")
    c = CELLS[cell](channels, topo.k, hidden)
    with torch.no_grad():  # non-zero last layer: measure a lattice that does something
        for p in c.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    return LatticeCore((size,) * 3, channels, c, topo, kernel, steps=steps)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(core: LatticeCore, batch: int, backward: bool, repeats: int) -> float:
    size = core.shape[0]
    field = torch.randn(batch, size, size, size, core.channels)

    if backward:
        core.train()

        def run():
            core.zero_grad(set_to_none=True)
            core(field).square().mean().backward()
    else:
        core.eval()

        def run():
            with torch.no_grad():
                core(field)

    seconds = timed(run, repeats)
    return batch * size ** 3 * core.steps / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (CI)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    channels, hidden, steps, cell = 16, 64, 4, "mlp"
    sizes = [8, 16] if args.quick else [8, 16, 32]
    batches = [1, 4] if args.quick else [1, 4, 16]
    repeats = 2 if args.quick else 5
    kernels = kernels_available()

    rows = []
    for size in sizes:
        for batch in batches:
            if size == 32 and batch == 16:  # too slow for the shared 2-core machine
                continue
            for backward in (False, True):
                rates = {}
                for name, kernel in kernels.items():
                    core = make_core(kernel, size, channels, cell, hidden, steps)
                    rates[name] = measure(core, batch, backward, repeats)
                rows.append((size, batch, "fwd+bwd" if backward else "fwd", rates))
                print(f"{size}³ B={batch} {'fwd+bwd' if backward else 'fwd'}: "
                      + ", ".join(f"{n} {r / 1e3:.1f} k cell-steps/s" for n, r in rates.items()), flush=True)

    params = []
    for name in ("mlp", "gmlp", "nca"):
        for nb in ("von-neumann", "18", "moore"):
            k = Topology((2, 2, 2), nb).k
            from cellnet_lattice.config import GatedMLPCellConfig, MLPCellConfig, NCACellConfig
            from cellnet_lattice.cells import build_cell

            cfg = {"mlp": MLPCellConfig, "gmlp": GatedMLPCellConfig, "nca": NCACellConfig}[name]()
            params.append((name, cfg.hidden, nb, k, build_cell(cfg, channels, k).num_params()))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Lattice core (cellnet-lattice)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load:.1f} when the run ended "
        "(its own 2 threads count towards it; small lattices are noisy: runs on the shared machine differed "
        "by up to 5× on some rows, so read small-lattice ratios as rough; the fused kernel comes from "
        "cellnet-kernels, which has its own benchmark, docs/results/kernels.md). "
        f"{'Quick run. ' if args.quick else ''}"
        f"Cell `{cell}` (hidden {hidden}), C = {channels}, von-neumann (K = 6), periodic, T = {steps} steps; "
        f"median of {repeats} runs after a warm-up. One cell-step = one cell updated once.",
        "",
    ]
    names = list(kernels)
    head = "| lattice | batch | pass | " + " | ".join(f"{n} (k cell-steps/s)" for n in names)
    head += "".join(f" | {n} ÷ reference" for n in names[1:]) + " |"
    lines += [head, "|" + "---|" * (3 + len(names) + len(names) - 1)]
    for size, batch, kind, rates in rows:
        ref = rates["reference"]
        cells = " | ".join(f"{rates[n] / 1e3:.1f}" for n in names)
        ratios = "".join(f" | {rates[n] / ref:.2f}×" for n in names[1:])
        lines.append(f"| {size}³ | {batch} | {kind} | {cells}{ratios} |")
    lines += ["", "32³ with batch 16 is left out (it takes minutes per row on 2 cores).",
              "", f"Parameters per cell type (C = {channels}; the cell is shared by every lattice site):", "",
              "| cell | hidden | neighbourhood | K | parameters |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {h} | {nb} | {k} | {p:,} |" for n, h, nb, k, p in params]
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
