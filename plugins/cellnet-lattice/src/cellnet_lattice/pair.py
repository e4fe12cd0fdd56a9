"""Pair scorers: a question and a candidate answer meet on the lattice, which returns a relevance score.

Each reshaper here has, besides ``to_field`` / ``from_state``, the pair protocol the pipeline uses
(:meth:`cellnet_core.pipeline.Pipeline.score_pairs`)::

    inputs = reshaper.pair_inputs(pipeline, questions, candidates)   # cached teacher encodings
    state  = core(reshaper.pair_field(inputs))                       # [N, X, Y, Z, C]
    score  = reshaper.pair_score(state, inputs)                      # [N]

and every score is ``cos(q, c) + readout(state)`` where ``q, c`` are the teacher's sentence
embeddings and the readout's last layer starts at zero: an untrained scorer ranks exactly as the
identity baseline does, and training has to beat where it starts.

``pair-faces``        the question's embedding on one face, the candidate's on the opposite face
                      (learned or exact, parameter-free placement); the two meet after ``Z − 1`` steps.
``interaction-grid``  the teacher's *token* states: cell ``(i, j)`` of the ``z = 0`` plane holds the
                      cosine of question token i and candidate token j, whether the two are the same
                      token, and optional learned product channels — the cellular analogue of
                      interaction-matrix models (MatchPyramid); the lattice grows matches of phrases.
``pair-mlp``          baseline, no lattice (use with ``core: identity``): an MLP on
                      ``[q, c, q⊙c, |q−c|]`` added to the cosine.
``conv-grid`` (core)  baseline for the grid: residual 2D convolutions of the same size as the lattice cell.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cellnet_core.errors import ConfigError
from cellnet_lattice.reshapers import face_points

log = logging.getLogger("cellnet_lattice")


def _masked_mean_max(flat: torch.Tensor, m: torch.Tensor | None, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and max of ``flat`` over ``dim`` where ``m`` (same shape, last axis 1) is 1."""
    if m is None:
        return flat.mean(dim), flat.amax(dim)
    m = m.to(flat.dtype)
    mean = (flat * m).sum(dim) / m.sum(dim).clamp_min(1.0)
    top = flat.masked_fill(m == 0, float("-inf")).amax(dim)
    return mean, torch.where(torch.isfinite(top), top, torch.zeros_like(top))


class ScoreReadout(nn.Module):
    """Pooled state features ``[N, F]`` → score ``[N]``: ``Linear(F, 1)`` (a linear skip) plus
    ``Linear(F, H)`` → GELU → ``Linear(H, 1)``. Both output layers start at zero, so an untrained
    readout adds nothing; the skip learns a plain weighting of the pooled channels (e.g. an
    idf-weighted overlap) in a few steps, the MLP what is not linear."""

    def __init__(self, features: int, hidden: int = 32):
        super().__init__()
        self.skip = nn.Linear(features, 1)
        self.hidden = nn.Linear(features, hidden)
        self.out = nn.Linear(hidden, 1)
        for layer in (self.skip, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled [N, F]`` → scores ``[N]``."""
        return (self.skip(pooled) + self.out(F.gelu(self.hidden(pooled)))).squeeze(-1)


def pool_cells(state: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``state [N, X, Y, Z, C]`` (+ cell mask ``[N, X, Y, Z]``) → ``[N, 2C]``: masked mean and max over cells."""
    N, C = state.shape[0], state.shape[-1]
    m = None if mask is None else mask.reshape(N, -1, 1)
    mean, top = _masked_mean_max(state.reshape(N, -1, C), m, 1)
    return torch.cat([mean, top], -1)


def pool_grid(state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, X, Y, Z, C]`` grid of question tokens (X) × candidate tokens (Y) → ``[N, 3C]``: the
    masked mean and max over cells, and per question token its best candidate token (max over Y)
    averaged over the question's tokens — how much of the question the candidate covers (the
    query-term pooling of interaction models)."""
    cells = pool_cells(state, mask)
    _, row = _masked_mean_max(state, mask[..., None], 2)  # [N, X, Z, C]
    q_valid = mask.any(2)[..., None].to(state.dtype)  # [N, X, Z, 1]
    cover = (row * q_valid).sum((1, 2)) / q_valid.sum((1, 2)).clamp_min(1.0)
    return torch.cat([cells, cover], -1)


def _cosine(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(q.float(), c.float(), dim=-1)


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """``[rows, cols]`` with orthonormal columns (rows ≥ cols) or rows (rows < cols)."""
    g = torch.Generator().manual_seed(int(seed))
    m = torch.randn(max(rows, cols), min(rows, cols), generator=g)
    q, _ = torch.linalg.qr(m)
    return q if rows >= cols else q.T


class _PairReshaper(nn.Module):
    """Shared parts: ``scores_pairs`` marker, the readout, the single-input fallback."""

    shape: tuple[int, int, int]
    channels: int

    @property
    def num_cells(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def lattice_params(self) -> int:  # pragma: no cover - documented by subclasses
        return 0


# -- question and candidate on opposite faces ------------------------------------------------------
class PairFacesReshaper(_PairReshaper):
    """Question embedding on ``q_face``, candidate embedding on the opposite face.

    ``adapter: learned`` — ``Linear(D → P·C)`` per slot (orthonormal init; ``shared`` uses one
    for both); ``adapter: exact`` — no parameters: the D dims fill the face's ``P·C`` slots in
    order (``P·C`` must equal D)."""

    def __init__(self, dim: int, shape: Sequence[int], channels: int, q_face: str = "z=0",
                 adapter: str = "learned", shared: bool = False, readout_hidden: int = 32, seed: int = 0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.channels, self.dim, self.out_dim = int(channels), int(dim), int(dim)
        axis, _, pos = q_face.partition("=")
        self.q_face, self.c_face = q_face, f"{axis}={'-1' if pos == '0' else '0'}"
        self.register_buffer("q_index", face_points(self.shape, self.q_face, "full", 1.0))
        self.register_buffer("c_index", face_points(self.shape, self.c_face, "full", 1.0))
        width = len(self.q_index) * self.channels
        self.adapter = adapter
        if adapter == "exact":
            if width != self.dim:
                raise ConfigError(f"reshaper.adapter: 'exact' needs face points × channels = D; got "
                                  f"{len(self.q_index)} × {self.channels} = {width} for D = {self.dim}")
            self.adapter_q = self.adapter_c = None
        else:
            if width < self.dim:
                raise ConfigError(f"reshaper: the face holds {width} values (points × channels), fewer than "
                                  f"the embedding's {self.dim}; enlarge the face or the channels")
            self.adapter_q = nn.Linear(self.dim, width, bias=False)
            with torch.no_grad():
                self.adapter_q.weight.copy_(_orthonormal(width, self.dim, seed))
            if shared:
                self.adapter_c = self.adapter_q
            else:
                self.adapter_c = nn.Linear(self.dim, width, bias=False)
                with torch.no_grad():
                    self.adapter_c.weight.copy_(_orthonormal(width, self.dim, seed + 1))
        self.readout = ScoreReadout(2 * self.channels, readout_hidden)

    def _place(self, field: torch.Tensor, index: torch.Tensor, emb: torch.Tensor,
               adapter: nn.Module | None) -> torch.Tensor:
        vals = emb if adapter is None else adapter(emb)
        return field.index_copy(1, index, vals.reshape(emb.shape[0], -1, self.channels))

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` → ``[B, X, Y, Z, C]`` with the question slot filled (the candidate face empty)."""
        field = emb.new_zeros(emb.shape[0], self.num_cells, self.channels)
        return self._place(field, self.q_index, emb, self.adapter_q).reshape(emb.shape[0], *self.shape,
                                                                               self.channels)

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """``[B, X, Y, Z, C]`` → ``[B, D]`` read back from the question face (exact inverse at init)."""
        B = state.shape[0]
        pts = state.reshape(B, self.num_cells, self.channels).index_select(1, self.q_index).reshape(B, -1)
        return pts if self.adapter_q is None else pts @ self.adapter_q.weight

    # -- the pair protocol ----------------------------------------------------------------------
    def pair_inputs(self, pipeline: Any, questions: Sequence[str], candidates: Sequence[str]) -> dict[str, Any]:
        """Sentence embeddings ``q, c [N, D]`` of both texts (through the pipeline's cache)."""
        dev = pipeline.device
        return {"q": pipeline.encode(questions).to(dev), "c": pipeline.encode(candidates).to(dev)}

    def pair_field(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``[N, X, Y, Z, C]``: q on its face, c on the opposite one, zero elsewhere."""
        q, c = inputs["q"], inputs["c"]
        field = q.new_zeros(q.shape[0], self.num_cells, self.channels)
        field = self._place(field, self.q_index, q, self.adapter_q)
        field = self._place(field, self.c_index, c, self.adapter_c)
        return field.reshape(q.shape[0], *self.shape, self.channels)

    def pair_score(self, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``cos(q, c) + readout(state)`` ``[N]``."""
        return _cosine(inputs["q"], inputs["c"]) + self.readout(pool_cells(state))

    def extra_repr(self) -> str:
        """Shape, faces and adapter, shown by ``repr(reshaper)``."""
        return f"shape={list(self.shape)}, C={self.channels}, q {self.q_face}, c {self.c_face}, adapter={self.adapter}"


# -- the token interaction grid -------------------------------------------------------------------
FEATURES = ("cos", "exact", "idf")
#: token ids index the idf table modulo this (MiniLM's vocabulary has 30,522 ids)
IDF_BUCKETS = 1 << 16


class InteractionGridReshaper(_PairReshaper):
    """Question tokens × candidate tokens on the ``z = 0`` plane of an ``(X, Y, Z)`` lattice.

    ``X`` / ``Y`` bound the question / candidate tokens (longer texts are cut). Channels of cell
    ``(i, j, 0)``: ``cos`` — cosine of the two tokens' teacher states; ``exact`` — 1 when they are
    the same token; ``idf`` — the same match weighted by the token's inverse document frequency
    (``log(M / (1 + df)) / log(M)`` over M training texts, set by :meth:`fit_tokens`; 1 before);
    then ``projection`` learned channels ``(W h_i) ⊙ (W h_j)``; the remaining channels start at 0
    for the lattice to use. Cells past a text's end are 0 and left out of the readout."""

    uses_tokens = True  #: its inputs are token states (``Pipeline.encode_tokens``)

    def __init__(self, dim: int, shape: Sequence[int], channels: int, features: Sequence[str] = FEATURES,
                 projection: int = 0, readout_hidden: int = 32, seed: int = 0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.channels, self.dim, self.out_dim = int(channels), int(dim), int(dim)
        self.features = tuple(features)
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ConfigError(f"reshaper.features: unknown {unknown}; available: {', '.join(FEATURES)}")
        used = len(self.features) + int(projection)
        if used > self.channels:
            raise ConfigError(f"reshaper.channels: {self.channels} is fewer than the {used} input channels "
                              f"({len(self.features)} features + {projection} projections)")
        self.register_buffer("idf", torch.ones(IDF_BUCKETS))
        self.projection = nn.Linear(dim, projection, bias=False) if projection else None
        if self.projection is not None:
            with torch.no_grad():
                self.projection.weight.copy_(_orthonormal(projection, dim, seed) * (dim / projection) ** 0.5)
        self.readout = ScoreReadout(3 * self.channels, readout_hidden)

    @torch.no_grad()
    def fit_tokens(self, pipeline: Any, texts: Sequence[str]) -> None:
        """Set the ``idf`` table from the token ids of ``texts`` (the training candidates): a
        statistic of the training split, not a learned weight; saved with the weights."""
        if "idf" not in self.features or not texts:
            return
        df = torch.zeros(IDF_BUCKETS)
        for ids, _ in pipeline.encode_tokens(list(texts)):
            df[torch.unique(ids % IDF_BUCKETS)] += 1
        m = float(len(texts))
        idf = torch.log(m / (1.0 + df)).clamp_min(0.0) / max(math.log(m), 1e-6)
        self.idf.copy_(idf.to(self.idf.device))

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """Not available: this reshaper scores (question, candidate) pairs; raises ConfigError."""
        raise ConfigError("reshaper 'interaction-grid' scores (question, candidate) pairs; it has no "
                          "single-embedding field (use Pipeline.score_pairs)")

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """Not available: this reshaper reads a score, not an embedding; raises ConfigError."""
        raise ConfigError("reshaper 'interaction-grid' scores (question, candidate) pairs; it reads no embedding")

    def _pad(self, rows: list[tuple[torch.Tensor, torch.Tensor]], length: int, device: Any
             ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(rows)
        ids = torch.full((n, length), -1, dtype=torch.long)
        states = torch.zeros(n, length, self.dim, dtype=torch.float16)
        for i, (tid, st) in enumerate(rows):
            L = min(length, tid.shape[0])
            ids[i, :L], states[i, :L] = tid[:L], st[:L]
        return ids.to(device), states.to(device)

    def pair_inputs(self, pipeline: Any, questions: Sequence[str], candidates: Sequence[str]) -> dict[str, Any]:
        """Padded token ids / states of both texts and their sentence embeddings (all cached)."""
        X, Y = self.shape[0], self.shape[1]
        dev = pipeline.device
        uq, uc = list(dict.fromkeys(questions)), list(dict.fromkeys(candidates))
        tq, tc = dict(zip(uq, pipeline.encode_tokens(uq))), dict(zip(uc, pipeline.encode_tokens(uc)))
        q_ids, q_states = self._pad([tq[t] for t in questions], X, dev)
        c_ids, c_states = self._pad([tc[t] for t in candidates], Y, dev)
        return {"q_ids": q_ids, "q_states": q_states, "c_ids": c_ids, "c_states": c_states,
                "q": pipeline.encode(questions).to(dev), "c": pipeline.encode(candidates).to(dev)}

    def mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``[N, X, Y, Z]`` true where both tokens exist."""
        valid = (inputs["q_ids"] >= 0)[:, :, None] & (inputs["c_ids"] >= 0)[:, None, :]
        return valid[..., None].expand(-1, -1, -1, self.shape[2])

    def pair_field(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``[N, X, Y, Z, C]``: the interaction features on the z = 0 plane."""
        hq, hc = inputs["q_states"].float(), inputs["c_states"].float()
        valid = (inputs["q_ids"] >= 0)[:, :, None] & (inputs["c_ids"] >= 0)[:, None, :]
        chans = []
        for f in self.features:
            if f == "cos":
                chans.append(torch.bmm(hq, hc.transpose(1, 2)))
            else:  # exact, idf
                same = (inputs["q_ids"][:, :, None] == inputs["c_ids"][:, None, :]).float()
                if f == "idf":
                    same = same * self.idf[inputs["q_ids"].clamp_min(0) % IDF_BUCKETS][:, :, None]
                chans.append(same)
        if self.projection is not None:
            pq, pc = self.projection(hq), self.projection(hc)  # [N, X, p], [N, Y, p]
            chans.extend((pq[:, :, None, :] * pc[:, None, :, :]).unbind(-1))
        plane = torch.stack(chans, -1) * valid[..., None].to(hq.dtype)  # [N, X, Y, F]
        N, X, Y, Z, C = plane.shape[0], *self.shape, self.channels
        field = plane.new_zeros(N, X, Y, Z, C)
        field[:, :, :, 0, : plane.shape[-1]] = plane
        return field

    def pair_score(self, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``cos(q, c) + readout(pool_grid(state))`` ``[N]`` over the valid cells."""
        return _cosine(inputs["q"], inputs["c"]) + self.readout(pool_grid(state, self.mask(inputs)))

    def extra_repr(self) -> str:
        """Grid size, channels, features and projection, shown by ``repr(reshaper)``."""
        proj = self.projection.out_features if self.projection is not None else 0
        return f"grid {self.shape[0]}×{self.shape[1]}×{self.shape[2]}, C={self.channels}, " \
               f"features={list(self.features)}, projection={proj}"


# -- baselines -----------------------------------------------------------------------------------
class PairMLPReshaper(_PairReshaper):
    """Baseline without a lattice (``core: identity``): ``cos(q, c) + MLP([q, c, q⊙c, |q−c|])``,
    the MLP's last layer zero at init."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.shape, self.channels = (1, 1, 1), 4 * int(dim)  # type: ignore[assignment]
        self.dim, self.out_dim = int(dim), int(dim)
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """Not available: this reshaper scores (question, candidate) pairs; raises ConfigError."""
        raise ConfigError("reshaper 'pair-mlp' scores (question, candidate) pairs (use Pipeline.score_pairs)")

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """Not available: this reshaper scores (question, candidate) pairs; raises ConfigError."""
        raise ConfigError("reshaper 'pair-mlp' scores (question, candidate) pairs (use Pipeline.score_pairs)")

    def pair_inputs(self, pipeline: Any, questions: Sequence[str], candidates: Sequence[str]) -> dict[str, Any]:
        """Sentence embeddings ``q, c [N, D]``."""
        dev = pipeline.device
        return {"q": pipeline.encode(questions).to(dev), "c": pipeline.encode(candidates).to(dev)}

    def pair_field(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``[N, 1, 1, 1, 4D]``: the features, for an identity core."""
        q, c = inputs["q"].float(), inputs["c"].float()
        return torch.cat([q, c, q * c, (q - c).abs()], -1).reshape(q.shape[0], 1, 1, 1, -1)

    def pair_score(self, state: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``cos(q, c) + MLP(features)`` ``[N]``."""
        return _cosine(inputs["q"], inputs["c"]) + self.mlp(state.reshape(state.shape[0], -1)).squeeze(-1)


class ConvGridCore(nn.Module):
    """Baseline core for ``interaction-grid``: ``layers`` residual blocks of
    ``Conv2d(C, H, k) → GELU → Conv2d(H, C, 1)`` on each z plane (last conv zero at init, so an
    untrained stack returns its input). ``forward(field [N, X, Y, Z, C]) -> [N, X, Y, Z, C]``."""

    def __init__(self, shape: Sequence[int], channels: int, hidden: int = 16, layers: int = 3,
                 kernel_size: int = 3):
        super().__init__()
        self.shape, self.channels = tuple(int(s) for s in shape), int(channels)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Sequential(nn.Conv2d(channels, hidden, kernel_size, padding=kernel_size // 2), nn.GELU(),
                                  nn.Conv2d(hidden, channels, 1))
            nn.init.zeros_(block[2].weight)
            nn.init.zeros_(block[2].bias)
            self.blocks.append(block)
        self.last_steps = layers

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """``field [N, X, Y, Z, C]`` → ``[N, X, Y, Z, C]`` after the residual 2D conv blocks on each
        z plane."""
        N, X, Y, Z, C = field.shape
        x = field.permute(0, 3, 4, 1, 2).reshape(N * Z, C, X, Y)
        for block in self.blocks:
            x = x + block(x)
        return x.reshape(N, Z, C, X, Y).permute(0, 3, 4, 1, 2).contiguous()


# -- factories -----------------------------------------------------------------------------------
def _warn_steps(cfg: Any, ctx: Any, needed: int, what: str) -> None:
    core = getattr(getattr(ctx, "config", None), "core", None)
    steps = getattr(core, "steps", None)
    if steps is not None and getattr(core, "name", "") == "lattice" and steps < needed:
        msg = (f"core.steps: {steps} is below {needed}, the steps {what}; the two inputs cannot "
               f"interact through the lattice")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)


def build_pair_faces(cfg, ctx) -> PairFacesReshaper:
    """Factory of the ``pair-faces`` reshaper; warns when the lattice has too few steps to cross
    between the faces."""
    r = PairFacesReshaper(ctx.embedding_dim, cfg.shape, cfg.channels, cfg.q_face, cfg.adapter, cfg.shared,
                          cfg.readout_hidden, seed=getattr(ctx, "seed", 0) or 0)
    axis = "xyz".index(cfg.q_face[0])
    _warn_steps(cfg, ctx, r.shape[axis] - 1, "a signal needs to cross from one face to the other")
    return r


def build_interaction_grid(cfg, ctx) -> InteractionGridReshaper:
    """Factory of the ``interaction-grid`` reshaper."""
    return InteractionGridReshaper(ctx.embedding_dim, cfg.shape, cfg.channels, cfg.features, cfg.projection,
                                   cfg.readout_hidden, seed=getattr(ctx, "seed", 0) or 0)


def build_pair_mlp(cfg, ctx) -> PairMLPReshaper:
    """Factory of the ``pair-mlp`` baseline reshaper."""
    return PairMLPReshaper(ctx.embedding_dim, cfg.hidden)


def build_conv_grid(cfg, ctx) -> ConvGridCore:
    """Factory of the ``conv-grid`` baseline core (shape and channels from ``ctx.reshaper``)."""
    r = ctx.reshaper
    return ConvGridCore(tuple(r.shape), int(r.channels), cfg.hidden, cfg.layers, cfg.kernel_size)
