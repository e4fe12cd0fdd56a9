"""Checkpoints: safetensors weights + a JSON manifest with plugin versions and file hashes.

No pickle anywhere. Every write is atomic (temporary file in the same folder, then rename), so an
interrupted save leaves the previous file intact. Every safetensors file cellnet writes carries a
checksum of its tensors and metadata (``cellnet_sha256`` in its header), checked whenever it is
read, so a flipped byte is found even in a file no manifest lists yet (a training checkpoint).
:func:`verify_manifest` names the first damaged, missing or unlisted file; manifest entries are
relative paths to regular files inside the run directory (absolute paths, ``..``, links out of it
and device files are refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable

from cellnet_core.errors import CheckpointError

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MANIFEST_VERSION = 1
CONFIG_FILE = "config.yaml"
#: files every run directory's manifest must list (its config and its weights)
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS)
#: folders whose every file the manifest must list (what loading a run reads as a whole)
LISTED_FOLDERS = ("encoder", "decoder")
#: the metadata key of a safetensors file's checksum (see :func:`tensors_checksum`)
CHECKSUM_KEY = "cellnet_sha256"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader sees the old file or the new one, never a part. A ``path`` that exists and is not a
    regular file (``/dev/stdout``, ``/dev/full``, a pipe) is written to directly: a rename would
    replace the device itself. An :class:`OSError` (disk full, read-only folder) names ``path``."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        # ENOSPC from write() names no file, a refused temporary file names itself: name the target
        if isinstance(exc, OSError) and (exc.filename is None or str(exc.filename) == str(tmp)
                                         or str(exc.filename).endswith(".tmp")):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented, key-sorted JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_checksum(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and bytes (names sorted) and every
    metadata entry but the checksum itself: what :func:`save_tensors` stores under ``cellnet_sha256``."""
    import torch

    h = hashlib.sha256()
    for key in sorted((metadata or {})):
        if key != CHECKSUM_KEY:
            h.update(json.dumps([key, metadata[key]]).encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """Save a flat ``{name: tensor}`` mapping as safetensors, atomically, with its checksum in the
    metadata (``cellnet_sha256``, see :func:`tensors_checksum`); returns the checksum."""
    import torch
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    meta = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM_KEY}
    meta[CHECKSUM_KEY] = tensors_checksum(clean, meta)
    atomic_write_bytes(path, save(clean, metadata=meta))
    return meta[CHECKSUM_KEY]


def _header_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (the header is parsed by safetensors first)."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n].decode("utf-8")).get("__metadata__") or {}


def read_tensors(path: str | Path, *, require_checksum: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, its checksum verified when it has one.

    Missing, unreadable, damaged (the checksum does not match) or — with ``require_checksum`` —
    without a checksum: :class:`CheckpointError` naming the file."""
    from safetensors.torch import load

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        meta = _header_metadata(raw)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on damage
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({exc})") from None
    want = meta.get(CHECKSUM_KEY)
    if want is None:
        if require_checksum:
            raise CheckpointError(f"{path}: has no checksum ({CHECKSUM_KEY}), so it cannot be verified; "
                                  "it was not written by this version of cellnet")
    elif tensors_checksum(tensors, meta) != want:
        raise CheckpointError(f"{path}: damaged (its tensors do not match the checksum in its header)")
    return tensors, meta


def load_tensors(path: str | Path, *, require_checksum: bool = False) -> dict[str, Any]:
    """Load a safetensors file (see :func:`read_tensors`); a missing, unreadable or damaged file
    raises :class:`CheckpointError` naming it."""
    return read_tensors(path, require_checksum=require_checksum)[0]


def _flatten(obj: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, prefix, tensors), _flatten(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_flatten(v, prefix, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save value of type {type(obj).__name__} without pickle")


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    return obj


def save_tree(path: str | Path, obj: Any) -> str:
    """Save nested dicts/lists of tensors and plain values (an optimizer's ``state_dict``) as
    safetensors, the structure kept as JSON in the file's metadata (covered by the checksum). No
    pickle. Returns the file's checksum."""
    tensors: dict[str, Any] = {}
    structure = _flatten(obj, "", tensors)
    return save_tensors(path, tensors, metadata={"cellnet_tree": json.dumps(structure)})


def load_tree(path: str | Path, *, require_checksum: bool = False) -> Any:
    """What :func:`save_tree` saved, its checksum verified; a damaged file or one without its
    structure metadata raises :class:`CheckpointError`."""
    tensors, meta = read_tensors(path, require_checksum=require_checksum)
    if "cellnet_tree" not in meta:
        raise CheckpointError(f"{path}: not a cellnet state file (no structure metadata)")
    try:
        return _unflatten(json.loads(meta["cellnet_tree"]), tensors)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged (its structure metadata does not parse: {exc})") from None


def plugin_versions() -> dict[str, str]:
    """``{distribution: version}`` of every installed cellnet plugin and of cellnet-core (for manifests)."""
    from importlib import metadata

    out = {}
    for ep in metadata.entry_points(group="cellnet.plugins"):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            out[dist.metadata["Name"]] = dist.version
    from cellnet_core import __version__

    out["cellnet-core"] = __version__
    return dict(sorted(out.items()))


def entry_path(run_dir: str | Path, rel: str, where: str | Path | None = None) -> Path:
    """The file a manifest entry ``rel`` names inside ``run_dir``, checked: a relative path without
    ``..``, not leaving ``run_dir`` through a link, a regular file (not a device, pipe or folder).

    Anything else raises :class:`CheckpointError` naming the entry (and ``where``, the manifest)."""
    run_dir = Path(run_dir)
    src = f" (in {where})" if where else ""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise CheckpointError(f"{run_dir}: manifest entry {rel!r} is not a file name{src}")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise CheckpointError(f"{run_dir}: manifest entry '{rel}' is an absolute path; entries are relative to "
                              f"the run directory{src}")
    if ".." in p.parts or ".." in rel.replace("\\", "/").split("/"):
        raise CheckpointError(f"{run_dir}: manifest entry '{rel}' leaves the run directory ('..'){src}")
    full = run_dir / p
    root = run_dir.resolve()
    try:
        resolved = full.resolve()
        resolved.relative_to(root)
    except ValueError:
        raise CheckpointError(f"{full}: a link out of the run directory (to {full.resolve()}){src}") from None
    except OSError as exc:
        raise CheckpointError(f"{full}: cannot be read ({exc.strerror or exc}){src}") from None
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{full}: missing{' (listed in ' + str(where) + ')' if where else ''}") from None
    except OSError as exc:
        raise CheckpointError(f"{full}: cannot be read ({exc.strerror or exc}){src}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{full}: not a regular file (only regular files are hashed){src}")
    return full


def refuse_links(run_dir: str | Path) -> None:
    """Raise :class:`CheckpointError` when ``run_dir`` or anything inside it is a symbolic link:
    cellnet writes only inside a run directory, and a link (``decoder/`` pointing elsewhere)
    would carry a save out of it."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise CheckpointError(f"{run_dir}: a symbolic link (to {os.readlink(run_dir)}); cellnet writes runs "
                              "only into real folders")
    if not run_dir.is_dir():
        return
    for here, dirs, files in os.walk(run_dir, followlinks=False):
        for name in dirs + files:
            p = Path(here) / name
            if p.is_symlink():
                raise CheckpointError(f"{p}: a symbolic link (to {os.readlink(p)}); cellnet writes only inside "
                                      "the run directory: remove the link")


def write_manifest(run_dir: str | Path, files: Iterable[str | Path], extra: dict[str, Any] | None = None) -> dict:
    """Hash ``files`` (paths inside ``run_dir``: absolute, relative to it, or relative to the working
    directory) into ``manifest.json``. A file outside ``run_dir``, a link out of it or anything but
    a regular file raises :class:`CheckpointError`, and so does an empty list."""
    run_dir = Path(run_dir).resolve()
    entries = {}
    for f in files:
        p = Path(f)
        full = p if p.is_absolute() else (run_dir / p if (run_dir / p).exists() else p.absolute())
        try:
            rel = full.absolute().relative_to(run_dir)
        except ValueError:
            try:
                rel = full.resolve().relative_to(run_dir)
            except ValueError:
                raise CheckpointError(f"{full}: outside the run directory {run_dir}; a manifest lists only "
                                      "files inside it") from None
        full = entry_path(run_dir, rel.as_posix())
        entries[rel.as_posix()] = {"sha256": sha256_file(full), "bytes": full.stat().st_size}
    if not entries:
        raise CheckpointError(f"{run_dir}: a manifest must list the run's files; none given")
    manifest = {"manifest_version": MANIFEST_VERSION, "plugins": plugin_versions(), "files": entries, **(extra or {})}
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def read_json(path: str | Path, missing: str) -> Any:
    """A JSON file's content; :class:`CheckpointError` ``"<path>: missing (<missing>)"`` when it is
    not there and ``"<path>: damaged (<why>)"`` when it does not parse."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing ({missing})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged ({exc})") from None


def read_manifest(run_dir: str | Path) -> dict:
    """A run directory's ``manifest.json``; missing or damaged raises :class:`CheckpointError` naming it."""
    path = Path(run_dir) / MANIFEST
    manifest = read_json(path, "is this a cellnet run directory?")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path}: damaged (no 'files' table)")
    return manifest


def verify_manifest(run_dir: str | Path, required: Iterable[str] = REQUIRED_FILES,
                    listed_folders: Iterable[str] = LISTED_FOLDERS, skip: Iterable[str] = ()) -> dict:
    """Check the run directory against its manifest and return the manifest.

    Every entry must be a relative path to a regular file inside ``run_dir`` (see
    :func:`entry_path`) with its recorded SHA-256; the manifest must list every ``required`` file
    and every file under ``listed_folders`` (what loading reads), so a manifest that lists nothing
    verifies nothing and is refused. ``skip``: entries not checked (a resume asked to restart
    checks its run without the training state). The first problem raises
    :class:`CheckpointError` naming the file."""
    run_dir = Path(run_dir)
    where = run_dir / MANIFEST
    manifest = read_manifest(run_dir)
    files = manifest["files"]
    if not files:
        raise CheckpointError(f"{where}: lists no files, so it verifies nothing (a run's manifest lists "
                              f"{', '.join(REQUIRED_FILES)} and every saved artefact)")
    skip = set(skip)
    for rel in required:
        if rel not in files:
            raise CheckpointError(f"{run_dir / rel}: not listed in {where} (a run's manifest must list it)")
    for folder in listed_folders:
        base = run_dir / folder
        if base.is_dir() and not base.is_symlink():
            for here, _dirs, names in os.walk(base, followlinks=False):
                for name in names:
                    rel = (Path(here) / name).relative_to(run_dir).as_posix()
                    if rel not in files and not name.startswith("."):
                        raise CheckpointError(f"{run_dir / rel}: not listed in {where} (every file under "
                                              f"{folder}/ is loaded, so each must be listed)")
    for rel, info in files.items():
        if rel in skip:
            continue
        path = entry_path(run_dir, rel, where)
        if not isinstance(info, dict) or sha256_file(path) != info.get("sha256"):
            raise CheckpointError(f"{path}: damaged (its sha256 does not match {where})")
    return manifest
