"""Checkpoints: safetensors weights + a JSON manifest with plugin versions and file hashes.

No pickle anywhere. Every write is atomic (temporary file in the same folder, then rename), so an
interrupted save leaves the previous file intact. :func:`verify_manifest` names the first damaged
or missing file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from cellnet_core.errors import CheckpointError

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MANIFEST_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def save_tensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save a flat ``{name: tensor}`` mapping as safetensors, atomically."""
    import torch
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    atomic_write_bytes(path, save(clean, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, Any]:
    """Load a safetensors file; a missing or unreadable file raises :class:`CheckpointError` naming it."""
    from safetensors.torch import load

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on damage
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({exc})") from None


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


def save_tree(path: str | Path, obj: Any) -> None:
    """Save nested dicts/lists of tensors and plain values (an optimizer's ``state_dict``) as
    safetensors, the structure kept as JSON in the file's metadata. No pickle."""
    tensors: dict[str, Any] = {}
    structure = _flatten(obj, "", tensors)
    save_tensors(path, tensors, metadata={"cellnet_tree": json.dumps(structure)})


def load_tree(path: str | Path) -> Any:
    """What :func:`save_tree` saved; a file without its structure metadata raises :class:`CheckpointError`."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "cellnet_tree" not in meta:
        raise CheckpointError(f"{path}: not a cellnet state file (no structure metadata)")
    return _unflatten(json.loads(meta["cellnet_tree"]), tensors)


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


def write_manifest(run_dir: str | Path, files: Iterable[str | Path], extra: dict[str, Any] | None = None) -> dict:
    """Hash ``files`` (paths inside ``run_dir``) into ``manifest.json``."""
    run_dir = Path(run_dir).resolve()
    entries = {}
    for f in files:
        p = Path(f)
        # absolute, relative to the run directory, or relative to the working directory
        full = p if p.is_absolute() else (run_dir / p if (run_dir / p).exists() else p.resolve())
        rel = full.resolve().relative_to(run_dir)
        entries[str(rel)] = {"sha256": sha256_file(full), "bytes": full.stat().st_size}
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


def verify_manifest(run_dir: str | Path) -> dict:
    """Check every file listed in the manifest exists and has its recorded hash."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    for rel, info in manifest["files"].items():
        path = run_dir / rel
        if not path.exists():
            raise CheckpointError(f"{path}: missing (listed in {run_dir / MANIFEST})")
        if sha256_file(path) != info.get("sha256"):
            raise CheckpointError(f"{path}: damaged (its sha256 does not match {run_dir / MANIFEST})")
    return manifest
