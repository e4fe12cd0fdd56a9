"""The run context a strategy trains in: directory, seed, metrics log, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellnet_core.checkpoint import atomic_write_json, load_tree, save_tree

STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr, quiet when ``CELLNET_QUIET=1`` or stderr is not a terminal
    and ``CELLNET_PROGRESS`` is not set."""
    from tqdm.auto import tqdm

    quiet = os.environ.get("CELLNET_QUIET") == "1" or (
        not sys.stderr.isatty() and os.environ.get("CELLNET_PROGRESS") != "1")
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
        path = self.run_dir / name
        if not path.exists():
            return None
        return load_tree(path)

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            atomic_write_json(self.run_dir / name, obj)
