"""The run context a strategy trains in: directory, seed, metrics log, checkpoints, resume.

What a run directory guarantees (docs/status.md, "Runs: what holds"):

- one writer at a time: :func:`lock_run_dir` takes an exclusive lock (``fcntl.flock`` on
  ``<parent>/.<name>.lock``, which records the holder's process id); a second writer is refused,
  a lock left by a dead process is taken over (the operating system drops it with the process);
- a run is written aside (``.<name>.partial``) and swapped into place when complete, so a
  finished run stays loadable while it is trained further, whatever stops the new training;
- what training reads back is verified: the training state and every file it references carry
  checksums (:meth:`RunContext.save_state`), ``checkpoint.json`` records that a state exists (a
  deleted state is an error unless a restart is asked for), a torn last line of
  ``metrics.jsonl`` is cut back to the last complete line with a warning;
- the training state carries the config's hash (:func:`config_hash`): resuming under another
  config is refused, except for the keys in :data:`RESUMABLE_KEYS`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellnet_core.checkpoint import atomic_write_json, atomic_write_text, load_tree, read_tensors, save_tensors, save_tree

STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"
#: written after every training state: which state files exist, their checksums and the config hash
CHECKPOINT_RECORD = "checkpoint.json"
#: config keys a resumed run may change (``--resume --set training.epochs=20``); a dotted key
#: covers everything under it. Any other difference from the run's own config is refused.
RESUMABLE_KEYS = ("training.epochs", "training.early_stopping", "training.plots", "device", "eval", "tracking")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    from cellnet_core.config import config_to_dict

    return config_to_dict(config)


def config_hash(config: Any) -> str:
    """SHA-256 (hex, first 16) of a run config (a validated config or its plain data), the keys in
    :data:`RESUMABLE_KEYS` left out: two configs a run may resume between hash the same."""
    flat = {k: v for k, v in _flat(_as_dict(config)).items() if not _resumable(k)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def config_changes(old: Any, new: Any) -> list[str]:
    """``key: old → new`` for every key outside :data:`RESUMABLE_KEYS` that differs."""
    a, b = _flat(_as_dict(old)), _flat(_as_dict(new))
    out = []
    for k in sorted(set(a) | set(b)):
        if not _resumable(k) and a.get(k) != b.get(k):
            out.append(f"{k}: {json.dumps(a.get(k), default=str)} → {json.dumps(b.get(k), default=str)}")
    return out


def check_resume_config(run_dir: str | Path, old: Any, new: Any) -> None:
    """Refuse (:class:`~cellnet_core.errors.ConfigError`) to resume the run in ``run_dir`` (whose
    config is ``old``) under ``new`` when they differ outside :data:`RESUMABLE_KEYS`."""
    from cellnet_core.errors import ConfigError

    changes = config_changes(old, new)
    if changes:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise ConfigError(f"{run_dir}: resuming under another config is refused: {changes[0]}{more}; a resumed run "
                          f"may change only {', '.join(RESUMABLE_KEYS)}; train a new run (or --overwrite) instead")


def warn(message: str) -> None:
    """One ``warning: …`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
    """Where a strategy writes. ``resume`` is true for ``cellnet train --resume``; ``restart``
    (``--restart``) lets a resume whose training state is gone start its training again.

    Training files go through :meth:`save_state` / :meth:`stage_tensors` / :meth:`load_state` /
    :meth:`load_tensors`: each carries a checksum that is verified when it is read back, and a
    state commits the files staged with it in one step (see :meth:`save_state`)."""

    run_dir: Path
    seed: int = 0
    resume: bool = False
    hook: Any = None  #: the plugin manager's hook relay, for observer hooks (may be None)
    rank: int = 0
    world_size: int = 1
    extras: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None  #: :func:`config_hash` of the run's config, kept in the training state
    restart: bool = False

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, str] = {}  # file name -> checksum, staged for the next state
        self._direct: dict[str, str] = {}  # the same, written in place before the first state
        self._committed: dict[str, str] | None = None  # file name -> checksum, as the last state lists them

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

    def read_metrics(self, repair: bool = False) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` so far (empty before the first).

        A last line that does not parse is what a kill in the middle of an append leaves: it is
        dropped with a warning (and, with ``repair``, cut from the file). A damaged line before
        the last raises :class:`~cellnet_core.errors.CheckpointError` naming file and line."""
        from cellnet_core.errors import CheckpointError

        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return []
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
        rows: list[dict[str, Any]] = []
        for j, (no, line) in enumerate(numbered):
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                if j == len(numbered) - 1:
                    warn(f"{path}: line {no} is incomplete (a write was cut off); dropped, the log ends at "
                         f"the last complete line")
                    if repair and self.is_main:
                        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
                    break
                raise CheckpointError(f"{path}: line {no}: damaged ({exc})") from None
            rows.append(row)
        return rows

    def truncate_metrics(self, last_epoch: int) -> None:
        """On resume: drop rows logged after the last complete checkpoint (and a torn last line)."""
        rows = [r for r in self.read_metrics(repair=True) if r.get("epoch", 0) <= last_epoch]
        atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))

    # -- training files ------------------------------------------------------------------------
    def stage_tensors(self, name: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
        """Save ``{name: tensor}`` (e.g. the best weights so far) for the next :meth:`save_state`.

        Before the first state of a run the file is written in place; after it, into
        ``.<name>.pending``, moved into place by the next state, so a kill in between leaves the
        file the last state lists."""
        if not self.is_main:
            return
        if self._committed is None:
            self._direct[name] = save_tensors(self.run_dir / name, tensors, metadata)
            return
        self._pending[name] = save_tensors(self.run_dir / f".{name}.pending", tensors, metadata)

    def save_state(self, state: dict[str, Any], name: str = STATE_FILE) -> None:
        """Save training state (model, optimizer, scheduler, RNG, epoch) atomically, no pickle.

        The state records the run's config hash and the checksum of every training file it goes
        with (those staged since the last state, and those before); it is written first, then the
        staged files move into place and ``checkpoint.json`` is updated. A kill at any point
        leaves a state whose files match it (a file still pending is moved on resume)."""
        if not self.is_main:
            return
        files = {**(self._committed or {}), **self._direct, **self._pending}
        record = {"state": name, "config_hash": self.config_hash, "files": files}
        checksum = save_tree(self.run_dir / name, {**state, "cellnet_run": record})
        for fname in self._pending:
            os.replace(self.run_dir / f".{fname}.pending", self.run_dir / fname)
        self._pending, self._direct = {}, {}
        self._committed = files
        atomic_write_json(self.run_dir / CHECKPOINT_RECORD, {**record, "state_sha256": checksum,
                                                             "epoch": state.get("epoch")})

    def load_state(self, name: str = STATE_FILE) -> dict[str, Any] | None:
        """The state :meth:`save_state` wrote, verified, or None when there is none yet.

        Every file the state lists is checked against its checksum (a pending one is moved into
        place first). A state that ``checkpoint.json`` says was written but is gone raises
        :class:`~cellnet_core.errors.CheckpointError` unless :attr:`restart`; so does a state made
        under another config (:attr:`config_hash`) or any damaged file, each naming the file."""
        from cellnet_core.checkpoint import read_json
        from cellnet_core.errors import CheckpointError

        path = self.run_dir / name
        record_path = self.run_dir / CHECKPOINT_RECORD
        if self.restart:  # asked to train again from scratch: the old state is not read, and goes
            self._committed = None
            if self.is_main:
                for old in (path, record_path):
                    old.unlink(missing_ok=True)
            return None
        if not path.exists():
            if record_path.exists():
                read_json(record_path, "")
                raise CheckpointError(f"{path}: missing, but {record_path.name} says training saved it; the run "
                                      f"cannot continue where it stopped: start its training again with "
                                      f"'cellnet train --resume {target_of(self.run_dir)} --restart'")
            return None
        try:
            state = load_tree(path, require_checksum=True)
        except CheckpointError as exc:
            if "has no checksum" not in str(exc):
                raise
            raise CheckpointError(f"{exc}; train it again from scratch with "
                                  f"'cellnet train --resume {target_of(self.run_dir)} --restart'") from None
        record = state.pop("cellnet_run", None) if isinstance(state, dict) else None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}: not a training state of this version of cellnet (no run record); "
                                  f"start its training again with --restart")
        if self.config_hash and record.get("config_hash") and record["config_hash"] != self.config_hash:
            raise CheckpointError(f"{path}: this training state was made under another config (hash "
                                  f"{record['config_hash']}, now {self.config_hash}); resuming under another "
                                  f"config is refused (only {', '.join(RESUMABLE_KEYS)} may change)")
        files = dict(record.get("files") or {})
        for fname, want in files.items():
            final, pending = self.run_dir / fname, self.run_dir / f".{fname}.pending"
            if pending.exists() and _checksum_or_none(pending) == want:
                if not self.is_main:
                    continue  # rank 0 moves it into place; load_tensors reads either
                os.replace(pending, final)  # the kill came between the state and its move
            if not final.exists():
                raise CheckpointError(f"{final}: missing (the training state {path.name} goes with it)")
            got = read_tensors(final, require_checksum=True)[1].get("cellnet_sha256")
            if got != want:
                raise CheckpointError(f"{final}: does not belong to the training state {path.name} "
                                      f"(its checksum differs from the one the state recorded)")
        for stray in self.run_dir.glob(".*.pending") if self.is_main else ():
            stray.unlink(missing_ok=True)  # staged for a state that was never written
        self._committed = files
        return state

    def load_tensors(self, name: str) -> dict[str, Any]:
        """A training file (e.g. ``best.safetensors``) verified against its own checksum and, after
        :meth:`load_state`, against the one the state recorded."""
        from cellnet_core.errors import CheckpointError

        want = (self._committed or {}).get(name)
        pending = self.run_dir / f".{name}.pending"
        if want is not None and pending.exists() and _checksum_or_none(pending) == want:
            return read_tensors(pending, require_checksum=True)[0]  # not moved into place yet (rank 0 does)
        tensors, meta = read_tensors(self.run_dir / name, require_checksum=True)
        if want is not None and meta.get("cellnet_sha256") != want:
            raise CheckpointError(f"{self.run_dir / name}: does not belong to the training state (its checksum "
                                  "differs from the one the state recorded)")
        return tensors

    def state_files(self) -> list[Path]:
        """The training files of this run that exist (state, what it lists, ``checkpoint.json``),
        for the run's manifest."""
        names = [STATE_FILE, CHECKPOINT_RECORD, *(self._committed or {})]
        return [self.run_dir / n for n in dict.fromkeys(names) if (self.run_dir / n).is_file()]

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as JSON into the run directory, atomically (main process only)."""
        if self.is_main:
            atomic_write_json(self.run_dir / name, obj)


def _checksum_or_none(path: Path) -> str | None:
    try:
        return read_tensors(path, require_checksum=True)[1].get("cellnet_sha256")
    except Exception:  # noqa: BLE001 - a damaged pending file is simply not the one
        return None


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


# -- one writer per run directory -----------------------------------------------------------------
def lock_path(run_dir: str | Path) -> Path:
    """The lock file of a run directory: ``<parent>/.<name>.lock`` (beside the run, so it holds
    while the run is swapped into place)."""
    target = target_of(run_dir)
    return target.parent / f".{target.name}.lock"


class RunLock:
    """An exclusive lock on one run directory, held by one process (``fcntl.flock``).

    The lock file records the holder's process id, for the message a second writer gets. The
    operating system releases the lock when its process ends, however it ends, so a lock file
    left by a dead process is simply taken over. Where ``fcntl`` does not exist (Windows) the
    lock is the partial directory's writer file only."""

    def __init__(self, run_dir: str | Path):
        self.target = target_of(run_dir)
        self.path = lock_path(self.target)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`~cellnet_core.errors.ConfigError` naming the holder."""
        from cellnet_core.errors import ConfigError

        try:
            import fcntl
        except ImportError:  # no flock on this platform
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"{self.path}: cannot create the run's lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode("utf-8", "replace").split()
                os.close(fd)
                who = f"process {holder[0]}" if holder else "another process"
                raise ConfigError(f"{self.target}: locked by {who}, which is writing this run right now "
                                  f"(lock file {self.path}); wait for it to end or stop it") from None
            # released and removed between our open and our lock: lock the file that is there now
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock and remove its file."""
        _HELD.pop(str(self.target.absolute()), None)
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


_HELD: dict[str, RunLock] = {}


def _release_all() -> None:
    for lock in list(_HELD.values()):
        try:
            lock.release()
        except OSError:
            pass


atexit.register(_release_all)  # a process that prepared a run for its workers leaves no lock file behind


def lock_run_dir(run_dir: str | Path) -> RunLock | None:
    """Lock ``run_dir`` for this process; return the lock (release it when done), or None when this
    process holds it already. A live holder elsewhere: :class:`~cellnet_core.errors.ConfigError`
    naming its process id. A run whose parent folder does not exist yet needs no lock until
    :func:`prepare_run_dir` makes it (which takes the lock then)."""
    target = target_of(run_dir)
    key = str(target.absolute())
    if key in _HELD:
        return None
    if not target.parent.is_dir():
        return None
    lock = RunLock(target).acquire()
    _HELD[key] = lock
    return lock


def holds_lock(run_dir: str | Path) -> bool:
    """True when this process holds the lock of ``run_dir``."""
    return str(target_of(run_dir).absolute()) in _HELD


def release_run_dir(run_dir: str | Path) -> None:
    """Release this process's lock of ``run_dir`` (nothing when it holds none)."""
    lock = _HELD.get(str(target_of(run_dir).absolute()))
    if lock is not None:
        lock.release()


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


#: parts of a complete run that a resumed run writes anew (the pipeline is rebuilt, not loaded)
_REBUILT = ("encoder", "decoder", "manifest.json")


def _check_resumable(target: Path, restart: bool) -> None:
    """A complete run about to be trained further: verified against its manifest first (a damaged
    file is named before anything is copied); a deleted training state is an error unless
    ``restart``."""
    from cellnet_core.checkpoint import read_manifest, verify_manifest
    from cellnet_core.errors import CheckpointError

    manifest = read_manifest(target)
    listed = manifest["files"]
    gone = [n for n in (STATE_FILE, CHECKPOINT_RECORD) if n in listed and not (target / n).exists()]
    if gone and not restart:
        raise CheckpointError(f"{target / gone[0]}: missing (listed in {target / 'manifest.json'}); the run cannot "
                              f"continue where it stopped: train it again from scratch with "
                              f"'cellnet train --resume {target} --restart'")
    skip = [n for n in listed if n in (STATE_FILE, CHECKPOINT_RECORD) or n.startswith("best.")] if restart else []
    verify_manifest(target, skip=skip)


def prepare_run_dir(run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                    dry_run: bool = False, restart: bool = False) -> Path:
    """Check ``run_dir`` and make the partial directory a run is written into; return it.

    - a new run (neither flag): refused with :class:`~cellnet_core.errors.ConfigError` when
      ``run_dir`` is a non-empty folder or an interrupted run of it waits in its partial sibling;
    - ``overwrite``: a leftover partial directory is removed; the old run stays in place until
      the new one is complete and replaces it (:func:`publish_run_dir`);
    - ``resume``: continues the interrupted run in the partial directory, or a complete run
      (verified against its manifest, then copied into a partial directory, so it stays
      loadable until the resumed run is done); ``restart`` accepts a run whose training state
      is gone (training starts again).

    Another process writing the run: refused, naming it (:func:`lock_run_dir`; the lock is taken
    here and held until :func:`publish_run_dir` or the end of the process). Symbolic links in
    the run are refused (writes never leave it). Nothing is written before every check has
    passed; ``dry_run`` only checks.
    """
    from cellnet_core.checkpoint import refuse_links
    from cellnet_core.errors import CheckpointError, ConfigError

    target = target_of(run_dir)
    partial = partial_dir(target)
    if target.is_symlink() or partial.is_symlink():
        refuse_links(target if target.is_symlink() else partial)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a directory")
    pid = _writer_alive(partial) if partial.exists() else None
    if pid is not None:
        raise ConfigError(f"{target}: process {pid} is writing this run right now (in {partial})")
    if resume:
        if overwrite:
            raise ConfigError("train: --resume continues a run and --overwrite replaces it; give one of them")
        if partial.exists():
            refuse_links(partial)
        else:
            if not (target / "config.yaml").exists():
                raise ConfigError(f"{target}: no run to resume here (no config.yaml, no interrupted run "
                                  f"in {partial.name}); start one with 'cellnet train CONFIG --run-dir {target}'")
            refuse_links(target)
            _check_resumable(target, restart)
            if dry_run:
                return partial
            if not dry_run:
                lock_run_dir(target)
            tmp = partial.parent / f"{partial.name}-copy-{os.getpid()}"
            try:
                shutil.copytree(target, tmp, symlinks=True)
                for name in _REBUILT:
                    p = tmp / name
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
                os.replace(tmp, partial)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise CheckpointError(f"{getattr(exc, 'filename', None) or tmp}: cannot copy the run to train it "
                                      f"further ({exc.strerror or exc}); {target} is unchanged") from None
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
            lock_run_dir(target)
            shutil.rmtree(partial)
        if dry_run:
            return partial
        partial.mkdir(parents=True)
    if dry_run:
        return partial
    lock_run_dir(target)
    atomic_write_text(partial / _OWNER_FILE, f"{os.getpid()}\n")
    return partial


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return rc == 0


def publish_run_dir(partial: str | Path, run_dir: str | Path) -> Path:
    """Move the complete run in ``partial`` to ``run_dir`` (replacing what was there); return it.

    Where the system can (Linux), the old and the new run are exchanged in one step, so
    ``run_dir`` always holds a complete run; elsewhere two renames on the same file system
    (``run_dir`` to a hidden ``.old`` name, then ``partial`` to ``run_dir``): a crash between
    them leaves the new run complete in ``partial`` and the old one under the ``.old`` name,
    never a mixture. The old run is then deleted and the run's lock released.
    """
    partial, target = Path(partial), Path(run_dir)
    (partial / _OWNER_FILE).unlink(missing_ok=True)
    old = None
    if target.exists():
        if _exchange(partial, target):
            # the old run is now in the partial's place: out of the way of a later --resume first
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(partial, old)
        else:
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(partial, target)
    else:
        os.replace(partial, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    release_run_dir(target)
    return target
