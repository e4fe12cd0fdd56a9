"""The run context a strategy trains in: directory, seed, metrics log, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellnet_core.checkpoint import atomic_write_json, load_tree, save_tree

STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"


class _LogLines:
    """Progress as one plain line on stderr at most every ``every`` seconds (for logs, where a
    redrawn bar is noise): ``encoding 20797 texts: 430/1300 batch (33%), 95 s``."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", every: float = 30.0,
                 initial: int = 0, **_: Any):
        import time

        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, float(every)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, int(initial)
        self._clock = time.perf_counter
        self.start = self.last = self._clock()

    def _line(self, final: bool = False) -> None:
        now = self._clock()
        if not final and now - self.last < self.every:
            return
        self.last = now
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        total = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}{share}, {now - self.start:.0f} s"
              + (" — done" if final else ""), file=sys.stderr, flush=True)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; print a line when ``every`` seconds have passed."""
        self.n += n
        self._line()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility; log lines carry no postfix."""

    def close(self) -> None:
        """A last line, only for work that took longer than one interval."""
        if self._clock() - self.start >= self.every:
            self._line(final=True)
            self.start = self._clock() + 1e9  # once

    def __enter__(self) -> "_LogLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable=None, log_every: float | None = None, **kwargs):
    """A tqdm progress bar on stderr, quiet when ``CELLNET_QUIET=1`` or stderr is not a terminal
    and ``CELLNET_PROGRESS`` is not set. With ``log_every`` (seconds), work without a terminal
    prints one plain progress line at most that often instead of nothing (long encodes in logs)."""
    from tqdm.auto import tqdm

    silent = os.environ.get("CELLNET_QUIET") == "1"
    quiet = silent or (not sys.stderr.isatty() and os.environ.get("CELLNET_PROGRESS") != "1")
    if quiet and not silent and log_every and not kwargs.get("disable"):
        return _LogLines(iterable, every=log_every, **kwargs)
    kwargs.setdefault("disable", quiet)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


@dataclass
class RunContext:
    """Where a strategy writes. ``resume`` is true for ``cellnet train --resume``."""

    run_dir: Path
    seed: int = 0
    resume: bool = False
    hook: Any = None  #: the plugin manager's hook relay, for observer hooks (may be None)
    rank: int = 0
    world_size: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def is_main(self) -> bool:
        """True in the process that writes files (rank 0)."""
        return self.rank == 0

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (main process only) and call observers."""
        if not self.is_main:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
        if self.hook is not None and "epoch" in row:
            self.hook.cellnet_on_epoch_end(run_dir=str(self.run_dir), epoch=int(row["epoch"]),
                                           metrics={k: v for k, v in row.items() if isinstance(v, (int, float))})

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` so far (empty before the first)."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, last_epoch: int) -> None:
        """On resume: drop rows logged after the last complete checkpoint."""
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        from cellnet_core.checkpoint import atomic_write_text

        atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))

    def save_state(self, state: dict[str, Any], name: str = STATE_FILE) -> None:
        """Save training state (model, optimizer, scheduler, RNG, epoch) atomically, no pickle."""
        if self.is_main:
            save_tree(self.run_dir / name, state)

    def load_state(self, name: str = STATE_FILE) -> dict[str, Any] | None:
        """The state :meth:`save_state` wrote, or None when there is none yet."""
        path = self.run_dir / name
        if not path.exists():
            return None
        return load_tree(path)

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as JSON into the run directory, atomically (main process only)."""
        if self.is_main:
            atomic_write_json(self.run_dir / name, obj)


# -- run directories ------------------------------------------------------------------------------
#: Prefix and suffix of the hidden sibling a run is written into before it is moved into place.
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".", ".partial"
_OWNER_FILE = ".cellnet-writer"


def partial_dir(run_dir: str | Path) -> Path:
    """The hidden sibling ``<parent>/.<name>.partial`` where ``run_dir`` is written until complete.

    Its name is the same in every process (a data-parallel run's workers share it) and after a
    crash, so ``cellnet train --resume RUN_DIR`` finds an interrupted run there.
    """
    run_dir = Path(run_dir)
    return run_dir.parent / f"{PARTIAL_PREFIX}{run_dir.name}{PARTIAL_SUFFIX}"


def target_of(path: str | Path) -> Path:
    """The run directory a path names: ``.<name>.partial`` → ``<name>``; any other path as is."""
    path = Path(path)
    name = path.name
    if name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX) and len(name) > len(PARTIAL_PREFIX + PARTIAL_SUFFIX):
        return path.parent / name[len(PARTIAL_PREFIX):-len(PARTIAL_SUFFIX)]
    return path


def _is_non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _writer_alive(partial: Path) -> int | None:
    """The id of a live process still writing ``partial`` (same machine), else None."""
    try:
        pid = int((partial / _OWNER_FILE).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # exists, owned by someone else
        return pid
    except OSError:
        return None
    return pid


def prepare_run_dir(run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                    dry_run: bool = False) -> Path:
    """Check ``run_dir`` and make the partial directory a run is written into; return it.

    - a new run (neither flag): refused with :class:`~cellnet_core.errors.ConfigError` when
      ``run_dir`` is a non-empty folder or an interrupted run of it waits in its partial sibling;
    - ``overwrite``: a leftover partial directory is removed; the old run stays in place until
      the new one is complete and replaces it (:func:`publish_run_dir`);
    - ``resume``: continues the interrupted run in the partial directory, or a complete run
      (copied into a partial directory first, so it stays loadable until the resumed run is done).

    Nothing is written before every check has passed; ``dry_run`` only checks.
    """
    from cellnet_core.errors import ConfigError

    target = target_of(run_dir)
    partial = partial_dir(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a directory")
    pid = _writer_alive(partial) if partial.exists() else None
    if pid is not None:
        raise ConfigError(f"{target}: process {pid} is writing this run right now (in {partial})")
    if resume:
        if overwrite:
            raise ConfigError("train: --resume continues a run and --overwrite replaces it; give one of them")
        if not partial.exists():
            if not (target / "config.yaml").exists():
                raise ConfigError(f"{target}: no run to resume here (no config.yaml, no interrupted run "
                                  f"in {partial.name}); start one with 'cellnet train CONFIG --run-dir {target}'")
            if dry_run:
                return partial
            tmp = partial.parent / f"{partial.name}-copy-{os.getpid()}"
            shutil.copytree(target, tmp)
            os.replace(tmp, partial)
    else:
        if _is_non_empty_dir(target) and not overwrite:
            raise ConfigError(f"{target}: not empty (it holds another run); choose another --run-dir, "
                              "continue it with --resume, or replace it with --overwrite")
        if partial.exists():
            if not overwrite:
                raise ConfigError(f"{target}: an interrupted run waits in {partial}; continue it with "
                                  f"'cellnet train --resume {target}' or start again with --overwrite")
            if dry_run:
                return partial
            shutil.rmtree(partial)
        if dry_run:
            return partial
        partial.mkdir(parents=True)
    if dry_run:
        return partial
    from cellnet_core.checkpoint import atomic_write_text

    atomic_write_text(partial / _OWNER_FILE, f"{os.getpid()}\n")
    return partial


def publish_run_dir(partial: str | Path, run_dir: str | Path) -> Path:
    """Move the complete run in ``partial`` to ``run_dir`` (replacing what was there); return it.

    Two renames on the same file system: ``run_dir`` (if any) to a hidden ``.old`` name, then
    ``partial`` to ``run_dir``, then the old one is deleted. A crash between the renames leaves
    the new run complete in ``partial`` and the old run under the ``.old`` name, never a mixture.
    """
    partial, target = Path(partial), Path(run_dir)
    (partial / _OWNER_FILE).unlink(missing_ok=True)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(partial, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
