"""The ``hybrid`` decoder: a phrase bank proposes its top-k, a generative decoder proposes its
beams; every candidate is re-embedded with the run's teacher encoder and the one whose embedding is
closest (cosine) to the target wins.

Because the bank's best entry and the generator's best beam are both among the candidates, the
winner's re-embedding cosine is never below either part's on its own. Until the generator has been
fit or loaded, the bank's candidates alone are used (re-ranked by the same cosine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from cellnet_core.checkpoint import atomic_write_json
from cellnet_core.errors import ConfigError
from cellnet_core.interfaces import Candidate
from cellnet_generative.decoder import GenerativeDecoder


def default_bank(registry: Any) -> dict[str, Any]:
    return {"name": "phrasebank"} if "phrasebank" in registry.names("decoder") else {"name": "nearest"}


class HybridDecoder:
    def __init__(self, cfg, ctx):
        if ctx is None or getattr(ctx, "encoder", None) is None:
            raise ConfigError("decoder 'hybrid' needs the run's teacher encoder (build it inside a pipeline, "
                              "or pass a BuildContext with encoder set)")
        self.cfg = cfg
        self.encoder = ctx.encoder
        bank_cfg = cfg.bank if cfg.bank is not None else default_bank(ctx.registry)
        self.bank = ctx.registry.build("decoder", bank_cfg, ctx)
        self.bank_name = bank_cfg["name"]
        self.generator = GenerativeDecoder(cfg.generator, embedding_dim=getattr(ctx, "embedding_dim", None),
                                           seed=getattr(ctx, "seed", 0) or 0, device=getattr(ctx, "device", None))

    # -- training -------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], embs: torch.Tensor) -> dict[str, Any]:
        """Fit the bank and train the generator on the same (text, embedding) pairs."""
        self.bank.fit(texts, embs)
        return {"bank": self.bank_name, "generator": self.generator.fit(texts, embs)}

    # -- decoding -------------------------------------------------------------------------
    def proposals(self, emb: torch.Tensor) -> list[list[str]]:
        """Every candidate text per row (bank top-k, then generated), duplicates and empties removed."""
        rows: list[list[str]] = [[c.text for c in r] for r in self.bank.candidates(emb, self.cfg.k)]
        if self.generator.trained:
            beams = self.generator.candidates(emb, self.cfg.beams)
            for r, b in zip(rows, beams):
                r.extend(c.text for c in b)
            if self.cfg.include_greedy:
                for r, g in zip(rows, self.generator.generate(emb, "greedy")):
                    r.append(g)
        return [list(dict.fromkeys(t for t in r if t.strip())) for r in rows]

    def candidates(self, emb: torch.Tensor, k: int | None = None) -> list[list[Candidate]]:
        """Candidates ranked by cosine between their teacher re-embedding and the row of ``emb``."""
        if emb.shape[0] == 0:
            return []
        emb = emb.detach().float().cpu()
        rows = self.proposals(emb)
        uniq = list(dict.fromkeys(t for r in rows for t in r))
        if not uniq:
            return [[] for _ in rows]
        vecs = F.normalize(self.encoder.encode(uniq).float(), dim=-1)
        pos = {t: i for i, t in enumerate(uniq)}
        target = F.normalize(emb, dim=-1)
        out = []
        for i, r in enumerate(rows):
            if not r:
                out.append([])
                continue
            sims = vecs[[pos[t] for t in r]] @ target[i]
            order = sims.argsort(descending=True).tolist()
            out.append([Candidate(r[j], float(sims[j])) for j in order[: (k or len(r))]])
        return out

    def decode(self, emb: torch.Tensor) -> list[str]:
        return [r[0].text if r else "" for r in self.candidates(emb, 1)]

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = list(self.bank.save(directory / "bank") or []) if hasattr(self.bank, "save") else []
        files += self.generator.save(directory / "generator")
        atomic_write_json(directory / "hybrid.json", {"bank": self.bank_name, "generator": self.cfg.generator.name,
                                                      "generator_trained": self.generator.trained})
        return [Path(f) for f in files] + [directory / "hybrid.json"]

    def load(self, directory: str | Path) -> None:
        directory = Path(directory)
        if hasattr(self.bank, "load") and (directory / "bank").exists():
            self.bank.load(directory / "bank")
        if (directory / "generator").exists():
            self.generator.load(directory / "generator")


def build_hybrid(cfg, ctx) -> HybridDecoder:
    return HybridDecoder(cfg, ctx)
