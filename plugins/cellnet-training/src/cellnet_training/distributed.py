"""Multi-process data-parallel training (``cellnet train --nproc N``).

:func:`launch` (called by :func:`cellnet_training.commands.run_train`, which takes ``cellnet
train`` over when ``--nproc`` is above 1) starts N workers through torch's elastic launcher
(``torch.distributed.run``), each running ``cellnet <argv>``; the workers find each other
through the environment it sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…). :func:`setup`
joins the process group (nccl when this process has a GPU of its own, gloo otherwise; see
:func:`choose_backend`) and fills ``RunContext.rank`` / ``world_size``. Strategies then call
:func:`shard`, :func:`gather_rows` and :func:`sum_gradients` (see :mod:`cellnet_training.engine`).
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any, Sequence

import torch


def env_world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) outside a launch."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its own machine (``LOCAL_RANK`` of the launcher; 0 outside one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def choose_backend(device_type: str | None = None) -> str:
    """``nccl`` when this process has a GPU of its own, ``gloo`` otherwise.

    A process has its own GPU when CUDA is available and its *local* rank indexes a GPU of this
    machine (``LOCAL_RANK < torch.cuda.device_count()``): 2 machines × 8 GPUs with 8 processes
    each is nccl although the 16 processes outnumber any one machine's GPUs. More processes than
    GPUs on a machine, CPU-only machines and ``device: cpu`` runs (``device_type == "cpu"``) use
    gloo. ``CELLNET_DIST_BACKEND`` overrides the choice.
    """
    forced = os.environ.get("CELLNET_DIST_BACKEND")
    if forced:
        return forced
    if device_type == "cpu":
        return "gloo"
    if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():
        return "nccl"
    return "gloo"


def setup(run: Any, device_type: str | None = None) -> None:
    """Join the process group if launched with several processes; set ``run.rank/world_size``.

    ``device_type`` is the type of the device the model is on (``"cpu"`` keeps nccl out)."""
    import torch.distributed as dist

    rank, world = env_world()
    if world <= 1 and not dist.is_initialized():
        return
    if not dist.is_initialized():
        backend = choose_backend(device_type)
        if backend == "nccl":
            torch.cuda.set_device(local_rank())  # one GPU per process
        dist.init_process_group(backend=backend)
    run.rank, run.world_size = dist.get_rank(), dist.get_world_size()


def shard(idx: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous slice of a global batch, padded to ``ceil(b / world)`` rows.

    Returns ``(rows, valid)``: padding rows repeat ``idx[0]`` and have ``valid == False``, so
    every process runs the same number of rows (collectives need equal sizes).
    """
    if world <= 1:
        return idx, torch.ones(idx.numel(), dtype=torch.bool)
    m = -(-idx.numel() // world)
    part = idx[rank * m:(rank + 1) * m]
    valid = torch.zeros(m, dtype=torch.bool)
    valid[:part.numel()] = True
    if part.numel() < m:
        part = torch.cat([part, idx[:1].expand(m - part.numel())])
    return part, valid


def gather_rows(local: torch.Tensor, total: int, world: int) -> torch.Tensor:
    """The whole batch's ``total`` predictions on every process, in batch order.

    ``local`` is this process's padded slice (see :func:`shard`). Other processes' rows arrive
    detached; this process's rows keep their graph, so the backward pass gives each process the
    gradient through its own rows only, and :func:`sum_gradients` adds them up into the
    full-batch gradient.
    """
    if world <= 1:
        return local[:total]
    import torch.distributed as dist

    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    # rows [r*m, r*m+m) of the global batch live on rank r; padding sits only at the end
    return torch.cat(parts)[:total]


def sum_gradients(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """All-reduce (sum) every parameter's gradient; missing gradients count as zero."""
    if world <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (workers must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def launch(nproc: int, argv: Sequence[str], *, entry: Sequence[str] | None = None) -> int:
    """Run ``cellnet <argv>`` in ``nproc`` processes on this machine; return the exit code.

    ``entry`` replaces the program the workers run (default ``-m cellnet_training.worker``,
    which calls the ``cellnet`` command line); tests use it to run a script.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        from cellnet_core.errors import ConfigError

        raise ConfigError(f"--nproc: must be at least 1 (got {nproc})")
    argv = strip_nproc(argv)
    program = list(entry) if entry is not None else ["-m", "cellnet_training.worker"]
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"cellnet-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)(*program, *argv)
    except Exception as exc:  # ChildFailedError: report the first failure's exit code
        failures = getattr(exc, "failures", None) or {}
        first = next(iter(failures.values()), None)
        sys.stderr.write(f"cellnet: a training process failed: {exc}\n")
        return int(getattr(first, "exitcode", 1) or 1)
    return 0
