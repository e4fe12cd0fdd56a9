"""On-disk embedding cache keyed by (encoder fingerprint, text).

Layout: ``<cache_dir>/<fingerprint>/<shard>.safetensors``. Each shard holds ``emb [N, D]`` and the
SHA-1 of each text in its metadata. A write creates a *new* shard atomically (unique temp name +
rename), so two processes writing at once never clobber each other; readers merge all shards.
A damaged shard is detected on read, discarded with a warning and its texts recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

from cellnet_core.checkpoint import atomic_write_bytes, atomic_write_text

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


class EmbeddingCache:
    """Cache for one encoder fingerprint."""

    def __init__(self, fingerprint: str, cache_dir: str | Path | None = None):
        self.fingerprint = fingerprint
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.dir = self.root / _safe_name(fingerprint)
        self._mem: dict[str, Any] = {}
        self._loaded: set[str] = set()

    def _refresh(self) -> None:
        from safetensors import safe_open
        from safetensors.torch import load

        if not self.dir.exists():
            return
        for shard in sorted(self.dir.glob("*.safetensors")):
            if shard.name in self._loaded:
                continue
            try:
                raw = shard.read_bytes()
            except FileNotFoundError:  # merged away by another process meanwhile
                continue
            try:
                data = load(raw)
                with safe_open(str(shard), framework="pt") as fh:
                    meta = fh.metadata() or {}
                keys = json.loads(meta["keys"])
                emb = data["emb"]
                if emb.shape[0] != len(keys):
                    raise ValueError(f"{emb.shape[0]} rows for {len(keys)} keys")
            except Exception as exc:  # noqa: BLE001 - any damage: discard and recompute
                warnings.warn(f"embedding cache: {shard} is damaged ({exc}); discarded, will recompute",
                              stacklevel=3)
                try:
                    shard.unlink()
                except OSError:
                    pass
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
        """Store ``embs [N, D]`` for ``texts`` as one new shard (atomic; merged past MAX_SHARDS)."""
        from safetensors.torch import save

        if len(texts) == 0:
            return
        keys = [text_key(t) for t in texts]
        emb = embs.detach().to("cpu").float().contiguous()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.safetensors"
        meta = {"keys": json.dumps(keys), "fingerprint": self.fingerprint}
        atomic_write_bytes(self.dir / name, save({"emb": emb}, metadata=meta))
        if not (self.dir / "fingerprint.txt").exists():
            atomic_write_text(self.dir / "fingerprint.txt", self.fingerprint + "\n")
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
        from safetensors.torch import save

        if not self._mem:
            return
        keys = list(self._mem)
        emb = torch.stack([self._mem[k] for k in keys])
        name = f"{uuid.uuid4().hex}.safetensors"
        meta = {"keys": json.dumps(keys), "fingerprint": self.fingerprint}
        atomic_write_bytes(self.dir / name, save({"emb": emb.contiguous()}, metadata=meta))
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


def cache_info(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per encoder fingerprint in the cache: fingerprint, dir, shards, texts, bytes."""
    from safetensors import safe_open

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rows = []
    if not root.exists():
        return rows
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        fp_file = d / "fingerprint.txt"
        fp = fp_file.read_text(encoding="utf-8").strip() if fp_file.exists() else "?"
        shards = list(d.glob("*.safetensors"))
        n = 0
        for s in shards:
            try:
                with safe_open(str(s), framework="pt") as fh:
                    n += len(json.loads((fh.metadata() or {}).get("keys", "[]")))
            except Exception:  # noqa: BLE001
                pass
        rows.append({"fingerprint": fp, "dir": str(d), "shards": len(shards), "texts": n,
                     "bytes": sum(s.stat().st_size for s in shards)})
    return rows


def cache_clear(cache_dir: str | Path | None = None) -> int:
    """Remove the cache's fingerprint folders (nothing else under the root); return the shards removed."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.exists():
        return 0
    n = 0
    # only the folders this cache made (a fingerprint.txt beside shards): never the rest of root
    for d in [p for p in root.iterdir() if p.is_dir() and (p / "fingerprint.txt").exists()]:
        n += sum(1 for _ in d.glob("*.safetensors"))
        shutil.rmtree(d)
    return n
