"""GPU benchmark of the lattice step kernels → docs/results/kernels_gpu.md (only where CUDA is present).

    .venv/bin/python bench/bench_kernels_gpu.py [--quick]

The CPU benchmark's shapes (16³×8, 32³×2, 8³×64; batch 4, C=16, hidden 64, von-neumann, periodic,
field injected at step 0) plus two GPU-sized ones (64³×8 batch 8, 128³×4 batch 4), for
`reference`, `fused` and `cuda` (bf16 autocast + CUDA-graph replay, and float32 without graphs),
forward (`no_grad`) and forward+backward, timed with `torch.cuda.synchronize()` around each
rollout, best of several repeats, ratios against `reference` in the same run. A parity line per
cell compares `cuda` (float32, no autocast) and `cuda` (bf16) with `reference` on the first shape.
The issue's target: ≥ 1e9 cell-steps/s forward on an H100-class GPU.

On a machine without CUDA it prints why and exits 0 without touching the results (so `make bench`
runs everywhere; the CPU numbers come from bench_kernels.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import CELLS, C, best_times, make, rollout  # noqa: E402

SHAPES = [((16, 16, 16), 8, 4), ((32, 32, 32), 2, 4), ((8, 8, 8), 64, 4), ((64, 64, 64), 8, 8),
          ((128, 128, 128), 4, 4)]
TARGET = 1e9


def timed(kernel, field, cell, topo, steps, backward: bool) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if backward:
        rollout(kernel, field, cell, topo, steps).float().pow(2).mean().backward()
    else:
        with torch.no_grad():
            rollout(kernel, field, cell, topo, steps)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def gpu_kernels() -> dict:
    from cellnet_lattice.kernels import ReferenceKernel

    from cellnet_kernels.cuda import CudaKernel
    from cellnet_kernels.fused import FusedKernel

    return {"reference": ReferenceKernel(), "fused": FusedKernel(), "cuda bf16+graphs": CudaKernel("bf16", True),
            "cuda fp32": CudaKernel("none", False)}


def parity(dev) -> list[str]:
    from cellnet_lattice.kernels import ReferenceKernel

    lines = []
    shape, steps, batch = SHAPES[0]
    for cell_name in CELLS:
        cell, topo = make(cell_name, shape)
        cell, topo = cell.to(dev), topo.to(dev)
        field = torch.randn(batch, *shape, C, device=dev)
        with torch.no_grad():
            want = rollout(ReferenceKernel(), field, cell, topo, steps)
            diffs = {n: float((rollout(k, field, cell, topo, steps) - want).abs().max())
                     for n, k in gpu_kernels().items() if n != "reference"}
        lines.append(f"- {cell_name}: max |kernel − reference| after {steps} steps: "
                     + ", ".join(f"{n} {v:.2e}" for n, v in diffs.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first two shapes, 2 repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "kernels_gpu.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels_gpu: no CUDA device here (torch.cuda.is_available() is False); "
              "nothing measured, docs/results left as they are")
        return
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    shapes = SHAPES[:2] if args.quick else SHAPES
    repeats = 2 if args.quick else 5
    rows = []
    for shape, steps, batch in shapes:
        for cell_name in CELLS:
            cell, topo = make(cell_name, shape)
            cell = cell.to(dev)
            topo = topo.to(dev)
            field = torch.randn(batch, *shape, C, device=dev)
            ks = gpu_kernels()
            best = best_times(ks, field, cell, topo, steps, repeats, timer=timed)
            work = batch * shape[0] * shape[1] * shape[2] * steps
            for n in ks:
                rows.append({"shape": "×".join(map(str, shape)), "steps": steps, "batch": batch, "cell": cell_name,
                             "kernel": n, "fwd": work / best[(n, False)], "fwdbwd": work / best[(n, True)],
                             "fwd_ratio": best[("reference", False)] / best[(n, False)],
                             "fwdbwd_ratio": best[("reference", True)] / best[(n, True)]})
                print(json.dumps(rows[-1]), flush=True)
            del field
            torch.cuda.empty_cache()

    lines = ["## Kernels on a GPU (cellnet-kernels)", "",
             f"Device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}), Python "
             f"{platform.python_version()}. Command: `.venv/bin/python bench/bench_kernels_gpu.py"
             f"{' --quick' if args.quick else ''}`. C=16, hidden 64, von-neumann, periodic, field at step 0; "
             "cell-steps/s = batch × cells × steps / second, best of repeats, synchronised; ×ref against "
             "`reference` on the same GPU in the same run.", "",
             "| lattice × steps (batch) | cell | kernel | fwd cell-steps/s | ×ref | fwd+bwd cell-steps/s | ×ref |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} × {r['steps']} ({r['batch']}) | {r['cell']} | {r['kernel']} | "
                     f"{r['fwd'] / 1e6:,.1f}M | {r['fwd_ratio']:.2f} | {r['fwdbwd'] / 1e6:,.1f}M | "
                     f"{r['fwdbwd_ratio']:.2f} |")
    top = max(rows, key=lambda r: r["fwd"])
    lines += ["", f"Fastest forward: {top['kernel']}, {top['cell']} at {top['shape']} × {top['steps']} "
              f"({top['batch']}): {top['fwd'] / 1e9:.2f}e9 cell-steps/s — target ≥ 1e9 on an H100-class GPU: "
              f"{'met' if top['fwd'] >= TARGET else 'missed'}.", "", "Parity on this GPU:", ""]
    lines += parity(dev)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
