"""The ``hybrid`` decoder: a phrase bank proposes its top-k, a generative decoder proposes its
beams (plus its greedy output and, with ``samples``, that many sampled texts); every candidate is re-embedded with the run's teacher encoder and the one whose embedding is
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
    """The bank part's config when none is given: ``phrasebank`` when installed, else the core's
    ``nearest``."""
    return {"name": "phrasebank"} if "phrasebank" in registry.names("decoder") else {"name": "nearest"}


class HybridDecoder:
    """Phrase-bank candidates plus generated ones, re-embedded by the teacher; the candidate closest
    to the target embedding wins (see the module docstring)."""

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
            for r, g in zip(rows, self._generated(emb)):
                r.extend(g)
        return [list(dict.fromkeys(t for t in r if t.strip())) for r in rows]

    def _generated(self, emb: torch.Tensor) -> list[list[str]]:
        rows = [[c.text for c in b] for b in self.generator.candidates(emb, self.cfg.beams)]
        if self.cfg.include_greedy:
            for r, g in zip(rows, self.generator.generate(emb, "greedy")):
                r.append(g)
        if self.cfg.samples:
            for r, g in zip(rows, self.generator.samples(emb, self.cfg.samples)):
                r.extend(g)
        return rows

    def candidates(self, emb: torch.Tensor, k: int | None = None) -> list[list[Candidate]]:
        """Candidates ranked by cosine between their teacher re-embedding and the row of ``emb``.

        With ``correction_rounds`` > 0, each round asks the generator again, conditioned on the target
        pushed away from the current best's re-embedding (``t + step·(t − best)``, at the target's
        norm), and adds those texts to the pool: a guess-and-check step in embedding space."""
        if emb.shape[0] == 0:
            return []
        emb = emb.detach().float().cpu()
        rows = self.proposals(emb)
        vec: dict[str, torch.Tensor] = {}
        target = F.normalize(emb, dim=-1)

        def embed_new(rs: list[list[str]]) -> None:
            new = list(dict.fromkeys(t for r in rs for t in r if t not in vec))
            if new:
                for t, v in zip(new, F.normalize(self.encoder.encode(new).float(), dim=-1)):
                    vec[t] = v

        def ranked() -> list[list[tuple[str, float]]]:
            out = []
            for i, r in enumerate(rows):
                sims = torch.stack([vec[t] for t in r]) @ target[i] if r else torch.zeros(0)
                out.append([(r[j], float(sims[j])) for j in sims.argsort(descending=True).tolist()])
            return out

        embed_new(rows)
        if not vec:
            return [[] for _ in rows]
        order = ranked()
        if self.generator.trained:
            norm = emb.norm(dim=-1, keepdim=True)
            for _ in range(self.cfg.correction_rounds):
                live = [i for i, r in enumerate(order) if r]
                if not live:
                    break
                best = torch.stack([vec[order[i][0][0]] for i in live])
                t = target[live]
                pushed = F.normalize(t + self.cfg.correction_step * (t - best), dim=-1) * norm[live]
                for i, extra in zip(live, self._generated(pushed)):
                    rows[i] = list(dict.fromkeys([*rows[i], *(x for x in extra if x.strip())]))
                embed_new(rows)
                order = ranked()
        return [[Candidate(t, s) for t, s in r[: (k or len(r))]] for r in order]

    def decode(self, emb: torch.Tensor) -> list[str]:
        """``emb [B, D]`` → the winning candidate per row (``""`` where there is none)."""
        return [r[0].text if r else "" for r in self.candidates(emb, 1)]

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[Path]:
        """Write the bank under ``bank/``, the generator under ``generator/`` and ``hybrid.json``;
        return every file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = list(self.bank.save(directory / "bank") or []) if hasattr(self.bank, "save") else []
        files += self.generator.save(directory / "generator")
        atomic_write_json(directory / "hybrid.json", {"bank": self.bank_name, "generator": self.cfg.generator.name,
                                                      "generator_trained": self.generator.trained})
        return [Path(f) for f in files] + [directory / "hybrid.json"]

    def load(self, directory: str | Path) -> None:
        """Read what :meth:`save` wrote (a part whose folder is missing stays as it is)."""
        directory = Path(directory)
        if hasattr(self.bank, "load") and (directory / "bank").exists():
            self.bank.load(directory / "bank")
        if (directory / "generator").exists():
            self.generator.load(directory / "generator")


def build_hybrid(cfg, ctx) -> HybridDecoder:
    """Factory of the ``hybrid`` decoder (needs the run's teacher in ``ctx.encoder``)."""
    return HybridDecoder(cfg, ctx)
