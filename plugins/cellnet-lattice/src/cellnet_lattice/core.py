"""The lattice core: ``steps`` synchronous residual updates of a learned cell on an (X, Y, Z) lattice.

One forward, with ``field [B, X, Y, Z, C]`` from the reshaper::

    state_0 = field
    for t in 0 .. T-1:
        inp_t  = field        if injection == "every" or t == 0 else None   # None ≡ zeros
        new    = kernel.step(state_t, inp_t, cell, topology)                # state + cell(gather(state), state, inp)
        new    = state_t + mask_t * (new - state_t)                         # training, fire_rate < 1 only
        new    = clamp(new, ±state_clip)                                     # state_clip > 0 only
        state_{t+1} = new
        (eval, tol > 0) stop once max|state_{t+1} - state_t| < tol for `patience` steps in a row

``mask_t [B, X, Y, Z, 1]`` is Bernoulli(``fire_rate``) per cell, drawn in training only
(evaluation updates every cell). The cell's last layer starts at zero, so an untrained lattice
returns its input in both injection modes. ``last_steps`` holds the number of steps the last
forward ran; ``kernel_name`` the kernel used (recorded in the run manifest).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

from cellnet_lattice.cells import build_cell
from cellnet_lattice.topology import Topology

log = logging.getLogger("cellnet_lattice")


def choose_kernel(registry: Any, device: Any) -> str:
    """``auto``: on CUDA ``cuda`` > ``fused`` > ``reference``; on CPU ``fused`` > ``reference``.
    A kernel whose optional dependency is missing is skipped."""
    names = set(registry.names("kernel")) if registry is not None else {"reference"}
    is_cuda = torch.device(device).type == "cuda" if device is not None else False
    order = ("cuda", "fused", "reference") if is_cuda else ("fused", "reference")
    for name in order:
        if name in names and not registry.get("kernel", name).missing_requirements():
            return name
    return "reference"


class LatticeCore(nn.Module):
    """``forward(field [B,X,Y,Z,C]) -> state [B,X,Y,Z,C]``.

    Args:
        shape, channels: the lattice (from the reshaper).
        cell: a :class:`~cellnet_lattice.cells.Cell` (or any module called as ``cell(neigh, own, inp)``).
        topology: a :class:`~cellnet_lattice.topology.Topology` of the same shape.
        kernel: an object with ``step(state, field, cell, topology)`` and ``name``.
        steps: T.  injection: ``first`` or ``every``.  edge_weights: ``none``, ``shared``, ``per-cell``.
        fire_rate, tol, patience, checkpoint_steps, state_clip, plasticity: see the config.
    """

    def __init__(self, shape: Sequence[int], channels: int, cell: nn.Module, topology: Topology, kernel: Any,
                 steps: int = 8, injection: str = "first", edge_weights: str = "none", fire_rate: float = 1.0,
                 tol: float = 0.0, patience: int = 1, checkpoint_steps: bool = False, state_clip: float = 0.0,
                 plasticity: Any = None):
        super().__init__()
        self.shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.channels = int(channels)
        if tuple(topology.shape) != self.shape:
            raise ValueError(f"topology shape {topology.shape} differs from the lattice shape {self.shape}")
        self.cell = cell
        self.topology = topology
        self.kernel = kernel
        self.kernel_name = getattr(kernel, "name", type(kernel).__name__)
        self.steps, self.injection = int(steps), injection
        self.fire_rate, self.tol, self.patience = float(fire_rate), float(tol), int(patience)
        self.checkpoint_steps, self.state_clip = bool(checkpoint_steps), float(state_clip)
        self.edge_weights = edge_weights
        n, k = topology.num_cells, topology.k
        if edge_weights == "shared":
            self.edge_weight = nn.Parameter(torch.ones(k))
        elif edge_weights == "per-cell":
            self.edge_weight = nn.Parameter(torch.ones(n, k))
        elif edge_weights == "none":
            self.edge_weight = None
        else:
            raise ValueError(f"unknown edge_weights '{edge_weights}'")
        self.plasticity = plasticity
        rule = getattr(plasticity, "rule", "none")
        if rule != "none" and self.edge_weight is None:
            raise ValueError("plasticity needs edge_weights 'shared' or 'per-cell'")
        if rule == "bcm":
            self.register_buffer("bcm_theta", torch.full((n,), 0.1))
        self.last_steps = 0

    # -- one step ---------------------------------------------------------------------------
    def _step(self, state: torch.Tensor, inp: torch.Tensor | None) -> torch.Tensor:
        return self.kernel.step(state, inp, self.cell, self.topology)

    def _prepare(self, field: torch.Tensor) -> None:
        if field.dim() != 5 or tuple(field.shape[1:4]) != self.shape or field.shape[-1] != self.channels:
            raise ValueError(f"lattice expects a field [B, {', '.join(map(str, self.shape))}, {self.channels}], "
                             f"got {list(field.shape)}")
        if self.topology.device != field.device:
            self.topology.to(field.device)
        self.topology.edge_weight = self.edge_weight

    def _run(self, field: torch.Tensor, record: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._prepare(field)
        state = field
        trace = [field] if record else []
        prev = field
        below = 0
        used = 0
        for t in range(self.steps):
            inp = field if (self.injection == "every" or t == 0) else None
            if self.checkpoint_steps and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                new = checkpoint(self._step, state, inp, use_reentrant=False)
            else:
                new = self._step(state, inp)
            if self.training and self.fire_rate < 1.0:
                mask = (torch.rand(*state.shape[:-1], 1, device=state.device) < self.fire_rate).to(state.dtype)
                new = state + mask * (new - state)
            if self.state_clip > 0:
                new = new.clamp(-self.state_clip, self.state_clip)
            prev, state = state, new
            used = t + 1
            if record:
                trace.append(state)
            if not self.training and self.tol > 0:
                change = (state - prev).abs().max().item()
                below = below + 1 if change < self.tol else 0
                if below >= self.patience:
                    break
        self.last_steps = used
        if self.training and getattr(self.plasticity, "rule", "none") != "none" and used > 0:
            self._plasticity_update(prev.detach(), state.detach())
        return state, trace

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """``field [B, X, Y, Z, C]`` → ``state [B, X, Y, Z, C]`` after up to ``steps`` steps."""
        return self._run(field, record=False)[0]

    @torch.no_grad()
    def trace(self, field: torch.Tensor) -> list[torch.Tensor]:
        """States ``[B, X, Y, Z, C]`` at steps ``0 .. last_steps`` (``0`` is the field), detached."""
        return [s.detach() for s in self._run(field, record=True)[1]]

    # -- plasticity -------------------------------------------------------------------------
    @torch.no_grad()
    def _plasticity_update(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """Vectorised update of the connection weights from the last step's activity.

        Activity ``a = tanh(state)``. ``pre[b, n, k]`` is neighbour k of cell n one step earlier,
        ``post[b, n]`` the cell now (``walls`` ghosts are zero).

        * hebbian (causal, STDP-style): ``Δw[n,k] = rate · mean_{b,c}(a_before[nbr(n,k)] · a_after[n])``
        * bcm: ``x = rms_c a_before[nbr]``, ``y = rms_c a_after[n]``,
          ``Δw = rate · mean_b(x · y · (y − θ_n))``, then ``θ ← (1−τ)θ + τ · mean_b y²``

        then ``w ← w − decay·(w − 1)``, optional competitive normalisation (mean 1 per cell),
        clamp to ``[min_weight, max_weight]``. Shared weights take the mean over cells.
        """
        p = self.plasticity
        w = self.edge_weight
        topo = self.topology
        B, C = before.shape[0], before.shape[-1]
        n = topo.num_cells
        a_pre = torch.tanh(before).reshape(B, n, C)
        a_post = torch.tanh(after).reshape(B, n, C)
        a_pre = torch.cat([a_pre, a_pre.new_zeros(B, 1, C)], 1).index_select(1, topo.index.reshape(-1))
        a_pre = a_pre.reshape(B, n, topo.k, C)
        if p.rule == "hebbian":
            dw = (a_pre * a_post.unsqueeze(2)).mean(dim=(0, 3))  # [N, K]
        else:  # bcm
            x = a_pre.pow(2).mean(-1).sqrt()  # [B, N, K]
            y = a_post.pow(2).mean(-1).sqrt()  # [B, N]
            theta = self.bcm_theta
            dw = (x * (y * (y - theta)).unsqueeze(-1)).mean(0)
            theta.mul_(1 - p.tau).add_(p.tau * y.pow(2).mean(0))
        dw = dw * p.rate
        if w.dim() == 1:
            dw = dw.mean(0)
        new = w + dw
        if p.decay > 0:
            new = new - p.decay * (new - 1.0)
        if p.normalise:
            new = new / new.mean(-1, keepdim=True).clamp_min(1e-6)
        w.copy_(new.clamp(p.min_weight, p.max_weight))

    def extra_repr(self) -> str:
        """Shape, steps, injection, kernel, topology and edge weights, shown by ``repr(core)``."""
        return (f"shape={list(self.shape)}, C={self.channels}, steps={self.steps}, injection={self.injection}, "
                f"kernel={self.kernel_name}, topology={self.topology}, edge_weights={self.edge_weights}")


def build_lattice(cfg, ctx) -> LatticeCore:
    """Factory of the ``lattice`` core: topology, cell and kernel (``auto`` chosen for the device)
    from the config and ``ctx.reshaper``."""
    reshaper = getattr(ctx, "reshaper", None)
    if reshaper is None:
        from cellnet_core.errors import ConfigError

        raise ConfigError("core 'lattice' needs a reshaper (shape, channels) built before it")
    shape, channels = tuple(reshaper.shape), int(reshaper.channels)
    topology = Topology(shape, cfg.neighbourhood, cfg.boundary)
    cell = build_cell(cfg.cell, channels, topology.k, getattr(ctx, "registry", None),
                      device=getattr(ctx, "device", None), seed=getattr(ctx, "seed", 0))
    name = cfg.kernel
    if name == "auto":
        name = choose_kernel(ctx.registry, ctx.device)
        log.info("lattice: kernel auto → %s (device %s)", name, ctx.device or "cpu")
    kernel_cfg = ctx.registry.config_for("kernel", {"name": name, **cfg.kernel_options},
                                         where="core.kernel_options")
    kernel = ctx.registry.build("kernel", kernel_cfg, ctx)
    core = LatticeCore(shape, channels, cell, topology, kernel, steps=cfg.steps, injection=cfg.injection,
                       edge_weights=cfg.edge_weights, fire_rate=cfg.fire_rate, tol=cfg.tol,
                       patience=cfg.patience, checkpoint_steps=cfg.checkpoint_steps, state_clip=cfg.state_clip,
                       plasticity=cfg.plasticity)
    core.kernel_name = name
    log.info("lattice: %s, cell %s (%d parameters)", core.extra_repr(), cfg.cell.name,
             sum(p.numel() for p in cell.parameters()))
    return core
