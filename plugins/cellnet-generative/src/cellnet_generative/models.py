"""The two conditional language models. Shapes: B batch, D teacher embedding size, P prefix
vectors, T tokens, V vocabulary, d model width.

Both take the teacher embedding ``emb [B, D]``, turn it into ``P`` prefix vectors
(``Linear D → P·d``) placed before the token embeddings, and predict the next token at every
token position. Both offer the same incremental interface used by generation:

* ``forward(emb, tokens [B, T]) -> logits [B, T, V]`` (full, teacher-forced),
* ``prefill(emb, tokens) -> (logits of the last position [B, V], cache)``,
* ``step(tokens [B], cache) -> (logits [B, V], cache)`` — one more token, reusing the cache
  (keys/values for the transformer, conv buffers and SSM state for the Mamba model).

Every cache tensor has the batch first, so :func:`reorder_cache` can select beams.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned gain."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d]`` scaled to unit RMS, times the gain."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def reorder_cache(cache: Any, index: torch.Tensor) -> Any:
    """Select rows (beams) of every tensor in a nested cache; ints pass through."""
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, index)
    if isinstance(cache, (list, tuple)):
        return type(cache)(reorder_cache(c, index) for c in cache)
    if isinstance(cache, dict):
        return {k: reorder_cache(v, index) for k, v in cache.items()}
    return cache


class Conditioner(nn.Module):
    """``emb [B, D]`` → ``P`` prefix vectors ``[B, P, d]``."""

    def __init__(self, emb_dim: int, d_model: int, prefix_len: int, normalize: bool):
        super().__init__()
        self.prefix_len, self.d_model, self.normalize = prefix_len, d_model, normalize
        self.proj = nn.Linear(emb_dim, prefix_len * d_model)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, D]`` → prefix vectors ``[B, P, d_model]``."""
        if self.normalize:
            emb = F.normalize(emb.float(), dim=-1)
        # the teacher embedding has unit norm: scale so each prefix vector starts at ~unit RMS
        return self.proj(emb * math.sqrt(emb.shape[-1])).view(emb.shape[0], self.prefix_len, self.d_model)


# ------------------------------------------------------------------------------------------
# Transformer ("ret")
# ------------------------------------------------------------------------------------------


def _rope_tables(n: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(n, dtype=torch.float32), inv)  # [n, hd/2]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary positions and an optional KV cache."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.dropout = dropout

    def forward(self, x, cos, sin, kv: tuple[torch.Tensor, torch.Tensor] | None):
        """``x [B, T, d]``; ``cos/sin [T, hd]`` for the positions of x; ``kv`` the cached keys and
        values ``[B, H, S, hd]`` of earlier positions (None: none). Returns output and new kv."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if kv is not None:
            k = torch.cat([kv[0], k], dim=2)
            v = torch.cat([kv[1], v], dim=2)
        s = k.shape[2]
        if t == 1:
            mask = None  # one new query sees every cached key
        elif s == t:
            mask = None
        else:  # several new queries after a cache: causal within the new part
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=(t > 1 and s == t),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), (k, v)


class SwiGLU(nn.Module):
    """Gated feed-forward layer: ``down(silu(gate(x)) · up(x))``."""

    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        """``x [B, T, d]`` → ``[B, T, d]``."""
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.drop(self.down(F.silu(g) * u))


class Block(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU, each residual."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.ffn = SwiGLU(d, ffn, dropout)

    def forward(self, x, cos, sin, kv=None):
        """``x [B, T, d]`` → ``(x', kv)``; ``cos``/``sin`` are the rotary tables, ``kv`` the cache
        of earlier positions."""
        a, kv = self.attn(self.n1(x), cos, sin, kv)
        x = x + a
        return x + self.ffn(self.n2(x)), kv


class RetLM(nn.Module):
    """Decoder-only transformer: RMSNorm, SwiGLU, rotary positions, tied input/output embedding,
    embedding-conditioned through ``P`` prefix vectors; KV cache for incremental decoding."""

    def __init__(self, vocab: int, emb_dim: int, d_model: int = 128, n_layers: int = 3, n_heads: int = 4,
                 ffn_hidden: int = 256, prefix_len: int = 4, max_len: int = 64, rope_base: float = 1e4,
                 dropout: float = 0.0, normalize_input: bool = True):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            from cellnet_core.errors import ConfigError

            raise ConfigError(f"decoder: n_heads {n_heads} must divide d_model {d_model} into even head sizes")
        self.vocab, self.d_model, self.rope_base = vocab, d_model, rope_base
        self.cond = Conditioner(emb_dim, d_model, prefix_len, normalize_input)
        self.tok = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, ffn_hidden, dropout) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        cos, sin = _rope_tables(prefix_len + max_len + 2, d_model // n_heads, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for b in self.blocks:  # scaled residual projections (GPT-2 style)
            nn.init.normal_(b.attn.out.weight, std=0.02 / math.sqrt(2 * n_layers))
            nn.init.normal_(b.ffn.down.weight, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _run(self, x: torch.Tensor, start: int, cache: list | None):
        t = x.shape[1]
        if start + t > self.cos.shape[0]:  # longer than trained: extend the tables
            self.cos, self.sin = (a.to(x.device) for a in _rope_tables(2 * (start + t), self.cos.shape[1],
                                                                       self.rope_base))
        cos = self.cos[start:start + t].to(x.dtype)
        sin = self.sin[start:start + t].to(x.dtype)
        new = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, cos, sin, None if cache is None else cache[i])
            new.append(kv)
        return self.norm(x) @ self.tok.weight.T, new

    def forward(self, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``emb [B, D]``, ``tokens [B, T]`` → next-token logits ``[B, T, V]``."""
        x = torch.cat([self.cond(emb), self.tok(tokens)], dim=1)
        logits, _ = self._run(x, 0, None)
        return logits[:, self.cond.prefix_len:]

    def prefill(self, emb: torch.Tensor, tokens: torch.Tensor):
        """Run the prefix and ``tokens [B, T]``; return the last position's logits ``[B, V]`` and
        the KV cache."""
        x = torch.cat([self.cond(emb), self.tok(tokens)], dim=1)
        logits, kv = self._run(x, 0, None)
        return logits[:, -1], {"kv": kv, "pos": x.shape[1]}

    def step(self, tokens: torch.Tensor, cache: dict):
        """One decoding step: ``tokens [B]`` and the cache → logits ``[B, V]`` and the updated
        cache."""
        logits, kv = self._run(self.tok(tokens)[:, None], cache["pos"], cache["kv"])
        return logits[:, -1], {"kv": kv, "pos": cache["pos"] + 1}


# ------------------------------------------------------------------------------------------
# Convolutional front + selective state space ("cct-mamba")
# ------------------------------------------------------------------------------------------


class CausalDepthwiseConv(nn.Module):
    """Causal depthwise conv over time. ``x [B, T, C]`` and a buffer of the last ``k-1`` inputs
    ``[B, k-1, C]`` (zeros at the start) → ``y [B, T, C]`` and the new buffer. Full-sequence and
    one-step use are the same computation."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)

    def forward(self, x: torch.Tensor, buf: torch.Tensor | None = None):
        """``x [B, T, C]`` (and the buffer) → ``(y [B, T, C], new buffer [B, k-1, C])``."""
        if buf is None:
            buf = x.new_zeros(x.shape[0], self.kernel - 1, x.shape[2])
        full = torch.cat([buf, x], dim=1)  # [B, k-1+T, C]
        y = self.conv(full.transpose(1, 2)).transpose(1, 2)
        return y, full[:, full.shape[1] - (self.kernel - 1):]


def selective_scan(u, delta, A, Bm, Cm, Dv, h=None):
    """Reference selective scan (Mamba S6), sequential over time.

    ``u, delta [B, T, E]``, ``A [E, N]`` (negative), ``Bm, Cm [B, T, N]``, ``Dv [E]``, optional
    initial state ``h [B, E, N]``. ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t·h_t + D u_t``.
    Returns ``y [B, T, E]`` and the last state.
    """
    b, t, e = u.shape
    if h is None:
        h = u.new_zeros(b, e, A.shape[1])
    dA = torch.exp(delta.unsqueeze(-1) * A)  # [B, T, E, N]
    dBu = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)  # [B, T, E, N]
    # unbind once: indexing dA[:, i] in the loop would make autograd scatter a full-size zero
    # gradient per step (T× slower backward)
    ys = []
    for a_t, b_t, c_t in zip(dA.unbind(1), dBu.unbind(1), Cm.unsqueeze(2).unbind(1)):
        h = a_t * h + b_t
        ys.append((h * c_t).sum(-1))
    return torch.stack(ys, dim=1) + u * Dv, h


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block: in_proj → (causal dwconv → SiLU → selective SSM) ⊙ SiLU(gate)
    → out_proj. State: the conv buffer and the SSM state."""

    def __init__(self, d: int, d_state: int, expand: int, d_conv: int, dropout: float):
        super().__init__()
        e = expand * d
        self.dt_rank = max(1, math.ceil(d / 16))
        self.norm = RMSNorm(d)
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.conv = CausalDepthwiseConv(e, d_conv)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=False)
        self.drop = nn.Dropout(dropout)
        self.d_state = d_state
        # dt initialised in [1e-3, 1e-1] (log-uniform), as in Mamba
        dt = torch.exp(torch.rand(e) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        """``x [B, T, d]`` and the optional ``(conv buffer, SSM state)`` → ``(x', new state)``."""
        conv_buf, h = (None, None) if state is None else state
        u, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        u, conv_buf = self.conv(u, conv_buf)
        u = F.silu(u)
        dt, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        y, h = selective_scan(u, delta, -torch.exp(self.A_log), Bm, Cm, self.D, h)
        return x + self.drop(self.out_proj(y * F.silu(z))), (conv_buf, h)


class ConvFront(nn.Module):
    """Compact convolutional front: residual causal depthwise conv + SiLU + pointwise mix."""

    def __init__(self, d: int, kernel: int):
        super().__init__()
        self.norm = RMSNorm(d)
        self.dw = CausalDepthwiseConv(d, kernel)
        self.pw = nn.Linear(d, d, bias=False)

    def forward(self, x, buf=None):
        """``x [B, T, d]`` and the conv buffer → ``(x', new buffer)``."""
        y, buf = self.dw(self.norm(x), buf)
        return x + self.pw(F.silu(y)), buf


class CctMambaLM(nn.Module):
    """Embedding-conditioned LM: prefix vectors + token embeddings → conv front → Mamba blocks →
    RMSNorm → tied output. Incremental decoding carries conv buffers and SSM states."""

    def __init__(self, vocab: int, emb_dim: int, d_model: int = 128, n_layers: int = 4, d_state: int = 16,
                 expand: int = 2, d_conv: int = 4, front_kernel: int = 3, prefix_len: int = 4,
                 dropout: float = 0.0, normalize_input: bool = True, **_: Any):
        super().__init__()
        self.vocab, self.d_model = vocab, d_model
        self.cond = Conditioner(emb_dim, d_model, prefix_len, normalize_input)
        self.tok = nn.Embedding(vocab, d_model)
        self.front = ConvFront(d_model, front_kernel)
        self.blocks = nn.ModuleList(MambaBlock(d_model, d_state, expand, d_conv, dropout) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.cond.proj.weight, std=0.02)
        nn.init.zeros_(self.cond.proj.bias)

    def _run(self, x, state):
        fb, bs = (None, [None] * len(self.blocks)) if state is None else state
        x, fb = self.front(x, fb)
        new = []
        for blk, s in zip(self.blocks, bs):
            x, s = blk(x, s)
            new.append(s)
        return self.norm(x) @ self.tok.weight.T, (fb, new)

    def forward(self, emb, tokens):
        """Teacher forcing: ``emb [B, D]``, ``tokens [B, T]`` → next-token logits ``[B, T, V]``."""
        x = torch.cat([self.cond(emb), self.tok(tokens)], dim=1)
        logits, _ = self._run(x, None)
        return logits[:, self.cond.prefix_len:]

    def prefill(self, emb, tokens):
        """Run the prefix and ``tokens [B, T]``; return the last position's logits ``[B, V]`` and
        the recurrent state."""
        x = torch.cat([self.cond(emb), self.tok(tokens)], dim=1)
        logits, state = self._run(x, None)
        return logits[:, -1], state

    def step(self, tokens, state):
        """One decoding step: ``tokens [B]`` and the state → logits ``[B, V]`` and the new state."""
        logits, state = self._run(self.tok(tokens)[:, None], state)
        return logits[:, -1], state
