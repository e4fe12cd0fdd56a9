"""On-disk cache of per-token teacher states, keyed by (the encoder's token fingerprint, text).

Some components look at a text's tokens rather than its pooled embedding (the interaction-grid
reshaper compares every question token with every candidate token). An encoder that can give them
has ``encode_tokens(texts) -> [(ids [L], states [L, D]), ...]`` and a ``token_fingerprint``.

Layout: ``<cache_dir>/tokens/<fingerprint hash>/<shard>.safetensors``, each shard holding the
concatenated ``ids [T]`` (int32), ``states [T, D]`` (float16) and ``offsets [N + 1]`` of N texts,
their SHA-1 keys in the metadata. A write makes a new shard atomically, as the embedding cache
does; every shard carries a checksum, verified on read, and a damaged shard is discarded with a
warning and its texts are computed again (see :mod:`cellnet_core.cache`, which also describes the
folder marker that ``cellnet cache clear`` goes by).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Sequence

from cellnet_core.cache import _safe_name, default_cache_dir, discard_shard, mark_cache_dir, read_shard, text_key
from cellnet_core.checkpoint import save_tensors
from cellnet_core.errors import ConfigError

TokenStates = tuple[Any, Any]  #: ``(ids [L] int64, states [L, D] float16)``


class TokenCache:
    """Token states of one encoder, in memory and on disk."""

    def __init__(self, encoder: Any, cache_dir: str | Path | None = None, enabled: bool = True):
        self.outer = encoder  # a CachedEncoder: its embedding cache is filled from the same passes
        inner = getattr(encoder, "inner", encoder)
        if not callable(getattr(inner, "encode_tokens", None)):
            raise ConfigError(f"encoder '{type(inner).__name__}' gives no token states (it has no "
                              f"encode_tokens); a transformer teacher such as 'minilm' or 'hf' does")
        self.inner = inner
        self.fingerprint = str(getattr(inner, "token_fingerprint", inner.fingerprint + ":tokens"))
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.dir = root / "tokens" / _safe_name(self.fingerprint)
        self.enabled = enabled
        self._mem: dict[str, TokenStates] = {}
        self._loaded: set[str] = set()
        self.calls = 0  #: encoder calls (tests count them)

    def _refresh(self) -> None:
        if not self.enabled or not self.dir.exists():
            return
        for shard in sorted(self.dir.glob("*.safetensors")):
            if shard.name in self._loaded:
                continue
            try:
                got = read_shard(shard)  # checksum verified
                if got is None:  # removed by another process meanwhile
                    continue
                data, meta = got
                keys = json.loads(meta["keys"])
                ids, states, offsets = data["ids"], data["states"], data["offsets"]
                if offsets.shape[0] != len(keys) + 1 or int(offsets[-1]) != ids.shape[0] or ids.shape[0] != states.shape[0]:
                    raise ValueError("offsets do not match the rows")
            except Exception as exc:  # noqa: BLE001 - any damage: discard and recompute
                discard_shard(shard, "token cache", exc)
                continue
            for j, key in enumerate(keys):
                a, b = int(offsets[j]), int(offsets[j + 1])
                self._mem[key] = (ids[a:b].long(), states[a:b])
            self._loaded.add(shard.name)

    def _write(self, keys: list[str], rows: list[TokenStates]) -> None:
        import torch

        mark_cache_dir(self.dir, self.fingerprint, "tokens")
        lengths = torch.tensor([0] + [int(r[0].shape[0]) for r in rows], dtype=torch.long)
        name = f"{uuid.uuid4().hex}.safetensors"
        save_tensors(self.dir / name, {"ids": torch.cat([r[0] for r in rows]).to(torch.int32).contiguous(),
                                       "states": torch.cat([r[1] for r in rows]).to(torch.float16).contiguous(),
                                       "offsets": lengths.cumsum(0)}, metadata={"keys": json.dumps(keys)})
        self._loaded.add(name)

    def get(self, texts: Sequence[str]) -> list[TokenStates]:
        """``(ids [L], states [L, D])`` per text; computes (and stores) only what is missing."""
        texts = list(texts)
        keys = [text_key(t) for t in texts]
        if any(k not in self._mem for k in keys):
            self._refresh()
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self._mem))
        if missing:
            self.calls += 1
            emb_cache = getattr(self.outer, "cache", None) if getattr(self.outer, "enabled", False) else None
            if emb_cache is not None and self.outer.fingerprint == self.inner.fingerprint:
                try:  # one model pass for token states and sentence embeddings
                    rows, emb = self.inner.encode_tokens(missing, return_embeddings=True)
                except TypeError:  # an encoder whose encode_tokens has no return_embeddings
                    rows = self.inner.encode_tokens(missing)
                else:
                    _, absent = emb_cache.get_many(missing)
                    if absent:
                        emb_cache.put_many([missing[i] for i in absent], emb[absent])
            else:
                rows = self.inner.encode_tokens(missing)
            new_keys = [text_key(t) for t in missing]
            for k, r in zip(new_keys, rows):
                self._mem[k] = (r[0].long(), r[1].half())
            if self.enabled:
                self._write(new_keys, [self._mem[k] for k in new_keys])
        return [self._mem[k] for k in keys]
