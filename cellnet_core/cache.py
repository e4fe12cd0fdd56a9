"""On-disk embedding cache keyed by (encoder fingerprint, text).

Layout: ``<cache_dir>/<fingerprint>/<shard>.safetensors``. Each shard holds ``emb [N, D]`` and the
SHA-1 of each text in its metadata. A write creates a *new* shard atomically (unique temp name +
rename), so two processes writing at once never clobber each other; readers merge all shards.

Every shard carries a checksum of its rows and keys (``cellnet_sha256`` in its metadata, see
:func:`cellnet_core.checkpoint.tensors_checksum`), verified when it is read: a damaged shard (a
flipped byte, a cut file, rows that do not match the keys) is discarded with a warning and its
texts are computed again — a cache can always be rebuilt, so damage costs time, never a wrong
embedding. Shards written before checksums existed are read as they are.

Each folder the cache makes holds a marker file (:data:`MARKER`); ``cellnet cache clear`` removes
only folders with that marker and, inside them, only the files the cache writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

from cellnet_core.checkpoint import atomic_write_text, read_tensors, save_tensors

#: the file that marks a folder as written by the cache (``cache clear`` removes nothing else)
MARKER = ".cellnet-cache"
#: names of the files the cache writes inside a marked folder
_OWN_FILES = re.compile(r"^(?:[0-9a-f]{32}\.safetensors|fingerprint\.txt|\.cellnet-cache|\..+\.tmp)$")

#: past this many shard files a cache merges what it has read into one
MAX_SHARDS = 32


def cellnet_home() -> Path:
    """Where cellnet keeps what it downloads and computes: ``$CELLNET_HOME``, else ``~/.cache/cellnet``.

    One location for every command, whoever starts it (make or a plain ``cellnet``): the embedding
    cache (``embeddings/``), converted teacher models (``models/``), ``ask``'s line history.
    """
    env = os.environ.get("CELLNET_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cellnet"


def cache_dir_source() -> tuple[Path, str]:
    """The embedding cache folder and how it was chosen (for ``cellnet cache info``)."""
    env = os.environ.get("CELLNET_CACHE_DIR")
    if env:
        return Path(env).expanduser(), "set by $CELLNET_CACHE_DIR"
    if os.environ.get("CELLNET_HOME"):
        return cellnet_home() / "embeddings", "$CELLNET_HOME/embeddings"
    return cellnet_home() / "embeddings", "the default, ~/.cache/cellnet/embeddings ($CELLNET_HOME unset)"


def default_cache_dir() -> Path:
    """The embedding cache: ``$CELLNET_CACHE_DIR`` if set, else ``<cellnet home>/embeddings``
    (see :func:`cellnet_home`)."""
    return cache_dir_source()[0]


def text_key(text: str) -> str:
    """The cache key of a text: its UTF-8 SHA-1, hex."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _safe_name(fingerprint: str) -> str:
    return hashlib.sha1(fingerprint.encode("utf-8")).hexdigest()[:20]


def mark_cache_dir(directory: Path, fingerprint: str, kind: str) -> None:
    """Create ``directory`` with its marker and ``fingerprint.txt`` (once; atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "fingerprint.txt").exists():
        atomic_write_text(directory / "fingerprint.txt", fingerprint + "\n")
    if not (directory / MARKER).exists():
        atomic_write_text(directory / MARKER, json.dumps({"written_by": "cellnet", "kind": kind,
                                                          "fingerprint": fingerprint}) + "\n")


def read_shard(shard: Path) -> tuple[dict[str, Any], dict[str, str]] | None:
    """``(tensors, metadata)`` of a cache shard, its checksum verified; None when it vanished
    (merged away by another process). Damage raises (the caller discards the shard)."""
    try:
        return read_tensors(shard)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - CheckpointError names the damage
        if not shard.exists():
            return None
        raise ValueError(str(exc).removeprefix(f"{shard}: ")) from None


def discard_shard(shard: Path, what: str, why: Any) -> None:
    """Warn that ``shard`` is damaged, remove it; its texts are computed again."""
    warnings.warn(f"{what}: {shard} is damaged ({why}); discarded, its texts will be computed again",
                  stacklevel=4)
    try:
        shard.unlink()
    except OSError:
        pass


class EmbeddingCache:
    """Cache for one encoder fingerprint."""

    def __init__(self, fingerprint: str, cache_dir: str | Path | None = None):
        self.fingerprint = fingerprint
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.dir = self.root / _safe_name(fingerprint)
        self._mem: dict[str, Any] = {}
        self._loaded: set[str] = set()

    def _refresh(self) -> None:
        if not self.dir.exists():
            return
        for shard in sorted(self.dir.glob("*.safetensors")):
            if shard.name in self._loaded:
                continue
            try:
                got = read_shard(shard)
                if got is None:  # merged away by another process meanwhile
                    continue
                data, meta = got
                keys = json.loads(meta["keys"])
                emb = data["emb"]
                if emb.shape[0] != len(keys):
                    raise ValueError(f"{emb.shape[0]} rows for {len(keys)} keys")
            except Exception as exc:  # noqa: BLE001 - any damage: discard and recompute
                discard_shard(shard, "embedding cache", exc)
                continue
            for k, row in zip(keys, emb):
                self._mem[k] = row
            self._loaded.add(shard.name)

    def get_many(self, texts: Sequence[str]) -> tuple[dict[int, Any], list[int]]:
        """Return ({index: embedding} found, [indices missing])."""
        self._refresh()
        found, missing = {}, []
        for i, t in enumerate(texts):
            row = self._mem.get(text_key(t))
            if row is None:
                missing.append(i)
            else:
                found[i] = row
        return found, missing

    def put_many(self, texts: Sequence[str], embs: Any) -> None:
        """Store ``embs [N, D]`` for ``texts`` as one new shard (atomic, with its checksum; merged
        past MAX_SHARDS)."""
        if len(texts) == 0:
            return
        keys = [text_key(t) for t in texts]
        emb = embs.detach().to("cpu").float().contiguous()
        mark_cache_dir(self.dir, self.fingerprint, "embeddings")
        name = f"{uuid.uuid4().hex}.safetensors"
        meta = {"keys": json.dumps(keys), "fingerprint": self.fingerprint}
        save_tensors(self.dir / name, {"emb": emb}, metadata=meta)  # with its checksum
        for k, row in zip(keys, emb):
            self._mem[k] = row
        self._loaded.add(name)
        if len(self._loaded) > MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """Merge every shard this process has read into one (many small writes, e.g. ``cellnet ask``
        in a loop, would otherwise leave one file per call). The merged shard is written before the
        old ones are removed, so a reader never loses an embedding."""
        import torch

        if not self._mem:
            return
        keys = list(self._mem)
        emb = torch.stack([self._mem[k] for k in keys])
        name = f"{uuid.uuid4().hex}.safetensors"
        meta = {"keys": json.dumps(keys), "fingerprint": self.fingerprint}
        save_tensors(self.dir / name, {"emb": emb.contiguous()}, metadata=meta)
        for old in self._loaded:
            try:
                (self.dir / old).unlink()
            except FileNotFoundError:
                pass
        self._loaded = {name}


class CachedEncoder:
    """Wraps an encoder so every ``encode`` goes through the disk cache.

    Exposes the wrapped encoder's ``dim`` and ``fingerprint``; ``calls`` counts model calls.
    """

    def __init__(self, encoder: Any, cache_dir: str | Path | None = None, enabled: bool = True):
        self.inner = encoder
        self.dim = encoder.dim
        self.fingerprint = encoder.fingerprint
        self.enabled = enabled
        self.cache = EmbeddingCache(encoder.fingerprint, cache_dir)
        self.calls = 0

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def encode(self, texts: Sequence[str]):
        """``texts`` → ``[B, D]`` float32: cached rows from disk, the rest from the encoder (then cached)."""
        import torch

        texts = list(texts)
        if not self.enabled:
            self.calls += 1
            return self.inner.encode(texts)
        if self.fingerprint != self.inner.fingerprint:  # e.g. preprocessing fitted after wrapping
            self.fingerprint = self.inner.fingerprint
            self.cache = EmbeddingCache(self.fingerprint, self.cache.root)
        if not texts:
            return torch.zeros(0, self.dim)
        found, missing = self.cache.get_many(texts)
        if missing:
            uniq = list(dict.fromkeys(texts[i] for i in missing))
            self.calls += 1
            new = self.inner.encode(uniq)
            self.cache.put_many(uniq, new)
            by_text = dict(zip(uniq, new))
            for i in missing:
                found[i] = by_text[texts[i]]
        return torch.stack([found[i] for i in range(len(texts))]).float()


def _entry_dirs(root: Path) -> list[Path]:
    """The folders under ``root`` that hold cache entries: ``<fingerprint>/`` and ``tokens/<fingerprint>/``."""
    out = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink() and p.name != "tokens"]
    tokens = root / "tokens"
    if tokens.is_dir() and not tokens.is_symlink():
        out += [p for p in sorted(tokens.iterdir()) if p.is_dir() and not p.is_symlink()]
    return out


def cache_info(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per cache folder (embeddings, and token states under ``tokens/``): fingerprint,
    dir, kind, shards, texts, bytes, ``marked`` (written by this cache: what ``clear`` removes)."""
    from safetensors import safe_open

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rows = []
    if not root.exists():
        return rows
    for d in _entry_dirs(root):
        fp_file = d / "fingerprint.txt"
        if not fp_file.exists() and not (d / MARKER).exists():
            continue  # not a cache folder
        fp = fp_file.read_text(encoding="utf-8").strip() if fp_file.exists() else "?"
        shards = list(d.glob("*.safetensors"))
        n = 0
        for s in shards:
            try:
                with safe_open(str(s), framework="pt") as fh:
                    n += len(json.loads((fh.metadata() or {}).get("keys", "[]")))
            except Exception:  # noqa: BLE001
                pass
        rows.append({"fingerprint": fp, "dir": str(d), "kind": "tokens" if d.parent.name == "tokens" else "embeddings",
                     "shards": len(shards), "texts": n, "bytes": sum(s.stat().st_size for s in shards),
                     "marked": (d / MARKER).is_file()})
    return rows


def cache_clear(cache_dir: str | Path | None = None) -> int:
    """Remove what the cache wrote under ``cache_dir``; return the shards removed.

    Only folders with the cache's marker (:data:`MARKER`) are touched, and inside them only the
    files the cache writes (shards, ``fingerprint.txt``, the marker, unfinished temporary files);
    a folder is removed when that leaves it empty. Anything else — another program's folder
    that happens to hold a ``fingerprint.txt``, a file someone put beside the shards, a link —
    stays."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.is_dir():
        return 0
    n = 0
    for d in _entry_dirs(root):
        if not (d / MARKER).is_file() or (d / MARKER).is_symlink():
            continue
        for f in list(d.iterdir()):
            if f.is_file() and not f.is_symlink() and _OWN_FILES.match(f.name):
                if f.suffix == ".safetensors":
                    n += 1
                f.unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:  # something the cache did not write is left in it
            pass
    tokens = root / "tokens"
    if tokens.is_dir() and not tokens.is_symlink():
        try:
            tokens.rmdir()
        except OSError:
            pass
    return n
