"""Configs of the lattice plugin's parts. No torch import here: listing and validating stay cheap."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellnet_core.config import ComponentConfig, registered_component, registered_name

Shape = tuple[int, int, int]
Face = Literal["x=0", "x=-1", "y=0", "y=-1", "z=0", "z=-1"]


def _sizes_in_range(cls: Any, v: Shape) -> Shape:
    """Shape validator shared by the reshaper configs: every size in 1..1024."""
    if any(s < 1 or s > 1024 for s in v):
        raise ValueError(f"every size must be in 1..1024, got {list(v)}")
    return v


class _Sub(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- checks at validation time: sizes against the teacher's D, memory ---------------------------------
_FLOAT = 4  # bytes of a float32
_ADAMW = 4  # a trained parameter is held 4 times: weights, gradients and AdamW's two moments


def _teacher_dim(run: Any) -> int | None:
    """The encoder's embedding size D when its config knows it (``embedding_dim()``), else None."""
    dim = getattr(getattr(run, "encoder", None), "embedding_dim", None)
    return dim() if callable(dim) else None


def _face_cells(shape: Shape, face: str) -> int:
    """Cells of one face of ``shape`` (``z=0``: X·Y)."""
    axis = "xyz".index(face[0])
    others = [s for i, s in enumerate(shape) if i != axis]
    return others[0] * others[1]


def _trains(run: Any) -> bool:
    """Whether the run's strategy trains the reshaper and core by gradient (it has ``lr_scale``)."""
    return hasattr(getattr(run, "training", None), "lr_scale")


def _adapter_params(run: Any, n: int) -> dict[str, int]:
    if not n:
        return {}
    if _trains(run):
        return {"learned adapters (weights, gradients, optimiser state)": n * _FLOAT * _ADAMW}
    return {"learned adapters": n * _FLOAT}


def _check_out_dim(cfg: Any, run: Any, dim: int) -> None:
    if cfg.out_dim is not None and cfg.out_dim != dim:
        raise ValueError(f"out_dim: {cfg.out_dim}, but encoder '{run.encoder.name}' gives {dim}-dim embeddings, "
                         f"the size training compares the output with and the decoder is fit on; leave out_dim "
                         f"out or set it to {dim}")


# -- cells (kind ``cell``; selected by ``core.cell``) ----------------------------------------------
class MLPCellConfig(ComponentConfig):
    """``concat(neighbours K·C, own C, input C) → hidden → C``."""

    name: Literal["mlp"] = "mlp"
    hidden: int = Field(64, ge=1, le=8192, description="hidden units H")
    delta_bound: float = Field(1.0, ge=0.0, le=100.0,
                               description="soft bound b of each step's update, delta = b·tanh(raw/b); 0: off")


class GatedMLPCellConfig(ComponentConfig):
    """Gated MLP: neighbour tokens gated by a learned K×K spatial mixing (gMLP's spatial gating unit)."""

    name: Literal["gmlp"] = "gmlp"
    hidden: int = Field(32, ge=1, le=8192, description="hidden units H (per neighbour token)")
    delta_bound: float = Field(1.0, ge=0.0, le=100.0,
                               description="soft bound b of each step's update, delta = b·tanh(raw/b); 0: off")


class NCACellConfig(ComponentConfig):
    """Growing-NCA style: learned depthwise perception filters over the neighbourhood, then an MLP."""

    name: Literal["nca"] = "nca"
    hidden: int = Field(64, ge=1, le=8192, description="hidden units H")
    filters: int = Field(3, ge=1, le=64,
                         description="perception filters F (0: identity, 1: neighbour mean, rest random; all learned)")
    delta_bound: float = Field(1.0, ge=0.0, le=100.0,
                               description="soft bound b of each step's update, delta = b·tanh(raw/b); 0: off")


#: the cells that exist without a registry at hand (a config built directly in Python)
BUILTIN_CELLS: dict[str, type[ComponentConfig]] = {"mlp": MLPCellConfig, "gmlp": GatedMLPCellConfig,
                                                   "nca": NCACellConfig}

#: ``core.cell``: any registered cell by name, with its own config
CellConfig = registered_component("cell", builtin=BUILTIN_CELLS)


class PlasticityConfig(_Sub):
    """Unsupervised plasticity of the connection weights, applied under ``no_grad`` after each
    training forward. Needs ``edge_weights`` other than ``none``."""

    rule: Literal["none", "hebbian", "bcm"] = Field(
        "none", description="none; hebbian (causal, STDP-style: neighbour at step t-1 × cell at step t); "
                            "bcm (x·y·(y−θ) with a sliding threshold θ = running mean of y²)")
    rate: float = Field(1e-3, ge=0.0, le=1.0, description="learning rate of the rule")
    decay: float = Field(0.0, ge=0.0, le=1.0, description="weight decay towards 1 per update")
    tau: float = Field(0.1, gt=0.0, le=1.0, description="BCM: update rate of the sliding threshold θ")
    normalise: bool = Field(False, description="competitive normalisation: each cell's incoming weights "
                                               "rescaled to mean 1 after the update")
    min_weight: float = Field(0.0, ge=-10.0, le=10.0, description="weights are clamped to at least this")
    max_weight: float = Field(2.0, ge=-10.0, le=10.0, description="weights are clamped to at most this")

    @model_validator(mode="after")
    def _bounds(self) -> "PlasticityConfig":
        if self.min_weight > self.max_weight:
            raise ValueError(f"min_weight {self.min_weight} is above max_weight {self.max_weight}")
        return self


# -- the core ------------------------------------------------------------------------------------
class LatticeCoreConfig(ComponentConfig):
    """The 3D cellular lattice: ``steps`` synchronous residual updates of a learned cell."""

    name: Literal["lattice"] = "lattice"
    cell: CellConfig = Field(default_factory=MLPCellConfig,
                             description="the cell update rule, a registered cell with its options: {name: mlp, hidden: 64} "
                                         "(built in: mlp, gmlp, nca; see cellnet components --kind cell)")
    steps: int = Field(8, ge=0, le=10000, description="lattice steps T (the most; see tol)")
    neighbourhood: Literal["von-neumann", "18", "moore"] = Field(
        "von-neumann", description="neighbours per cell: von-neumann (6 faces), 18 (faces+edges), moore (26)")
    boundary: Literal["periodic", "walls", "reflecting", "absorbing"] = Field(
        "periodic", description="past a face: periodic wraps, walls are zero, reflecting mirrors, "
                                "absorbing copies the edge cell")
    injection: Literal["first", "every"] = Field(
        "first", description="the field is the initial state and the cell's input at step 0 only (first) "
                             "or at every step (every)")
    edge_weights: Literal["none", "shared", "per-cell"] = Field(
        "none", description="learned connection weights: none, shared [K], per-cell [X·Y·Z, K] (init 1)")
    fire_rate: float = Field(1.0, gt=0.0, le=1.0,
                             description="probability that a cell updates at a training step (1.0: all, off)")
    tol: float = Field(0.0, ge=0.0, description="eval only: stop when max |state change| < tol for "
                                                "`patience` steps in a row (0: always run all steps)")
    patience: int = Field(1, ge=1, le=10000, description="steps below tol before stopping")
    kernel: registered_name("kernel", extra=("auto",)) = Field(  # type: ignore[valid-type]
        "auto", description="the step kernel by registered name, or auto (CUDA: cuda > fused > reference; "
                            "CPU: fused > reference)")
    kernel_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the chosen kernel (e.g. {slab_cells: 262144} for chunked, "
                                          "{amp: bf16} for cuda, {block_cells: 0} for fused); checked against "
                                          "that kernel's config by `cellnet validate` and before training")
    checkpoint_steps: bool = Field(False, description="gradient checkpointing over steps (less memory, "
                                                      "one extra forward)")
    state_clip: float = Field(0.0, ge=0.0, description="clamp the state to [-state_clip, state_clip] after "
                                                       "every step (0: off)")
    plasticity: PlasticityConfig = Field(default_factory=PlasticityConfig,
                                         description="unsupervised plasticity of the edge weights (off by default)")

    @model_validator(mode="after")
    def _plasticity_needs_weights(self) -> "LatticeCoreConfig":
        if self.plasticity.rule != "none" and self.edge_weights == "none":
            raise ValueError(f"plasticity rule '{self.plasticity.rule}' changes the connection weights; "
                             "set edge_weights to shared or per-cell")
        return self

    def check_run(self, run: Any, registry: Any) -> None:
        """``kernel_options`` against the kernel's config, at validation time (no torch import).

        With ``kernel: auto`` the kernel depends on the device: the options must suit one of the
        kernels ``auto`` may choose for ``run.device`` (CUDA: cuda, fused, reference; CPU: fused,
        reference); the error names the first of them.
        """
        if not self.kernel_options:
            return
        if self.kernel != "auto":
            candidates = [self.kernel]
        else:
            device = str(getattr(run, "device", "auto"))
            order = ("fused", "reference") if device in ("cpu", "mps") else ("cuda", "fused", "reference")
            names = set(registry.names("kernel"))
            candidates = [n for n in order if n in names] or ["reference"]
        first = None
        for name in candidates:
            try:
                registry.config_for("kernel", {"name": name, **self.kernel_options}, where="core.kernel_options")
                return
            except Exception as exc:  # noqa: BLE001 - a ConfigError naming the path and field
                first = first or exc
        raise first  # type: ignore[misc]

    def memory_bytes(self, run: Any) -> dict[str, int]:
        """The lattice states of one training batch: a batch of ``training.batch_size`` lattices of
        X·Y·Z cells × C channels (float32); a strategy that trains the core by gradient keeps every
        step's state for the backward pass (steps + 1 of them, with or without ``checkpoint_steps``;
        without it, each step's gathered neighbours and hidden units besides), any other holds two."""
        reshaper = getattr(run, "reshaper", None)
        shape, channels = getattr(reshaper, "shape", None), getattr(reshaper, "channels", None)
        batch = getattr(getattr(run, "training", None), "batch_size", None)
        if not isinstance(channels, int) or not isinstance(batch, int):
            return {}
        if shape is None:  # flat/permuted default: (D // C, 1, 1)
            dim = _teacher_dim(run)
            if dim is None:
                return {}
            shape = (max(1, dim // channels), 1, 1)
        cells = int(shape[0]) * int(shape[1]) * int(shape[2])
        states = self.steps + 1 if _trains(run) else 2
        return {f"{states} lattice states of {cells:,} cells × {channels} channels × batch {batch}":
                states * batch * cells * channels * _FLOAT}


class ReferenceKernelConfig(ComponentConfig):
    """The reference step: index_select gather, then the cell. Clear and slow; the parity baseline."""

    name: Literal["reference"] = "reference"


# -- reshapers -----------------------------------------------------------------------------------
class SurfaceReshaperConfig(ComponentConfig):
    """Embedding onto points of one face through a learned Linear; read back from the opposite face."""

    name: Literal["surface"] = "surface"
    shape: Shape = Field((8, 8, 8), description="lattice (X, Y, Z)")
    channels: int = Field(8, ge=1, le=4096, description="state channels C per cell")
    placement: Literal["full", "proportional", "corners", "random"] = Field(
        "full", description="which cells of the face are I/O points: full (all), proportional (an even grid "
                            "covering `fraction` of the face), corners (four corner blocks), random (seeded)")
    fraction: float = Field(0.25, gt=0.0, le=1.0, description="share of the face used by proportional, "
                                                              "corners and random")
    in_face: Face = Field("z=0", description="input face (axis=0: first layer, axis=-1: last layer)")
    out_face: Optional[Face] = Field(None, description="output face; default: the face opposite in_face")
    out_dim: Optional[int] = Field(None, ge=1, le=65536, description="size D' of from_state; default D")
    init: Literal["default", "inverse"] = Field(
        "default", description="adapter initialisation: 'default' (PyTorch's); 'inverse': the input adapter "
                               "gets orthonormal columns and the output adapter its transpose, so with "
                               "out_face == in_face an untrained lattice returns the embedding exactly "
                               "(training starts from the identity baseline); needs points×channels ≥ D")

    _positive = field_validator("shape")(_sizes_in_range)

    @model_validator(mode="after")
    def _inverse_same_face(self):
        if self.init == "inverse" and self.out_face is not None and self.out_face != self.in_face:
            raise ValueError("init 'inverse' reads back what was written: set out_face equal to in_face")
        return self

    def check_run(self, run: Any, registry: Any) -> None:
        """``out_dim`` and ``init: inverse`` against the teacher's D, when its config knows D."""
        dim = _teacher_dim(run)
        if dim is None:
            return
        _check_out_dim(self, run, dim)
        width = _face_cells(self.shape, self.in_face) * self.channels
        if self.init == "inverse" and self.placement == "full" and width < dim:
            raise ValueError(f"init: 'inverse' needs input points × channels ≥ D; the face holds "
                             f"{_face_cells(self.shape, self.in_face)} × {self.channels} = {width} for D = {dim}")

    def memory_bytes(self, run: Any) -> dict[str, int]:
        """The two adapters' parameters (placement ``full``: every face cell; otherwise not counted)."""
        dim = _teacher_dim(run)
        if dim is None or self.placement != "full":
            return {}
        points = _face_cells(self.shape, self.in_face)
        width = points * self.channels
        return _adapter_params(run, (dim + 1) * width + (width + 1) * (self.out_dim or dim))


class VolumeReshaperConfig(ComponentConfig):
    """Learned Linear from the embedding onto every cell×channel, and from the whole state back."""

    name: Literal["volume"] = "volume"
    shape: Shape = Field((8, 8, 8), description="lattice (X, Y, Z)")
    channels: int = Field(4, ge=1, le=4096, description="state channels C per cell")
    out_dim: Optional[int] = Field(None, ge=1, le=65536, description="size D' of from_state; default D")

    _positive = field_validator("shape")(_sizes_in_range)

    def check_run(self, run: Any, registry: Any) -> None:
        """``out_dim`` against the teacher's D, when its config knows D."""
        dim = _teacher_dim(run)
        if dim is not None:
            _check_out_dim(self, run, dim)

    def memory_bytes(self, run: Any) -> dict[str, int]:
        """The two linear maps between D and every cell × channel."""
        dim = _teacher_dim(run)
        if dim is None:
            return {}
        size = self.shape[0] * self.shape[1] * self.shape[2] * self.channels
        return _adapter_params(run, (dim + 1) * size + (size + 1) * (self.out_dim or dim))


class PermutedReshaperConfig(ComponentConfig):
    """Importance-ordered placement: a fixed permutation of D onto X·Y·Z·C (must equal D); exact inverse."""

    name: Literal["permuted"] = "permuted"
    shape: Optional[Shape] = Field(None, description="lattice (X, Y, Z); default (D // C, 1, 1)")
    channels: int = Field(1, ge=1, le=4096, description="state channels C per cell")
    placement: Literal["centre", "surface", "random", "index"] = Field(
        "centre", description="where the most important dims go: centre (nearest the lattice centre first), "
                              "surface (farthest first), random (seeded), index (plain reshape order)")
    importance: Literal["index", "variance"] = Field(
        "index", description="dim importance: index (dim 0 most important) or variance (set by fit(embs) on data)")

    def check_run(self, run: Any, registry: Any) -> None:
        """X·Y·Z·C must equal the teacher's D (or C divide D without a shape), when its config knows D."""
        dim = _teacher_dim(run)
        if dim is None:
            return
        if self.shape is None:
            if dim % self.channels:
                raise ValueError(f"channels: {self.channels} does not divide the embedding size {dim} of encoder "
                                 f"'{run.encoder.name}'")
            return
        size = self.shape[0] * self.shape[1] * self.shape[2] * self.channels
        if size != dim:
            raise ValueError(f"shape {list(self.shape)} × channels {self.channels} = {size} slots, but encoder "
                             f"'{run.encoder.name}' gives {dim} dims; they must be equal for 'permuted'")


# -- pair scorers (cellnet_lattice.pair) -----------------------------------------------------------
class PairFacesReshaperConfig(ComponentConfig):
    """Pair scorer: the question's embedding on one face, the candidate's on the opposite face;
    score = cos(q, c) + a readout of the lattice state (zero at init: starts at the identity ranking)."""

    name: Literal["pair-faces"] = "pair-faces"
    shape: Shape = Field((8, 8, 4), description="lattice (X, Y, Z); the faces are the two ends of q_face's axis")
    channels: int = Field(6, ge=1, le=4096, description="state channels C per cell")
    q_face: Face = Field("z=0", description="the question's face; the candidate goes on the opposite one")
    adapter: Literal["learned", "exact"] = Field(
        "learned", description="learned: Linear(D → face points·C) per slot (orthonormal init); exact: no "
                               "parameters, the D dims fill the face in order (face points × C must equal D)")
    shared: bool = Field(False, description="learned adapters: one for both slots")
    readout_hidden: int = Field(32, ge=1, le=4096, description="hidden units of the score readout")

    _positive = field_validator("shape")(_sizes_in_range)

    def check_run(self, run: Any, registry: Any) -> None:
        """A face's points × channels against the teacher's D (exact: equal; learned: at least D)."""
        dim = _teacher_dim(run)
        if dim is None:
            return
        points = _face_cells(self.shape, self.q_face)
        width = points * self.channels
        if self.adapter == "exact" and width != dim:
            raise ValueError(f"adapter: 'exact' needs face points × channels = D; got {points} × {self.channels} = "
                             f"{width} for D = {dim} (encoder '{run.encoder.name}')")
        if self.adapter == "learned" and width < dim:
            raise ValueError(f"the face holds {width} values (points × channels), fewer than the {dim} of encoder "
                             f"'{run.encoder.name}'; enlarge the face or the channels")


class InteractionGridReshaperConfig(ComponentConfig):
    """Pair scorer on token states: question tokens × candidate tokens on the z=0 plane (channels:
    token cosine, exact token match, optional learned products); score = cos(q, c) + readout."""

    name: Literal["interaction-grid"] = "interaction-grid"
    shape: Shape = Field((16, 48, 1), description="(question tokens, candidate tokens, depth Z); longer texts are cut")
    channels: int = Field(4, ge=1, le=4096, description="state channels C per cell (≥ features + projection)")
    features: tuple[Literal["cos", "exact", "idf"], ...] = Field(
        ("cos", "exact", "idf"), description="parameter-free input channels: cos (token-state cosine), exact "
                                             "(same token), idf (same token × its inverse document frequency "
                                             "over the training candidates, set before training)")
    projection: int = Field(0, ge=0, le=256, description="learned product channels (W h_q) ⊙ (W h_c); 0: none "
                                                         "(then the reshaper has no parameters but the readout)")
    readout_hidden: int = Field(32, ge=1, le=4096, description="hidden units of the score readout")

    _positive = field_validator("shape")(_sizes_in_range)


class PairMLPReshaperConfig(ComponentConfig):
    """Baseline pair scorer without a lattice (use core: identity): cos(q, c) + MLP([q, c, q⊙c, |q−c|])."""

    name: Literal["pair-mlp"] = "pair-mlp"
    hidden: int = Field(64, ge=1, le=65536, description="hidden units (choose to match a lattice scorer's size)")


class ConvGridCoreConfig(ComponentConfig):
    """Baseline core for the interaction grid: residual 2D convolutions on each z plane."""

    name: Literal["conv-grid"] = "conv-grid"
    hidden: int = Field(16, ge=1, le=4096, description="hidden channels of each block")
    layers: int = Field(3, ge=0, le=256, description="residual blocks")
    kernel_size: int = Field(3, ge=1, le=15, description="spatial kernel size (odd)")


# -- conversation context (cellnet_lattice.context) ----------------------------------------------
class ContextPlanesReshaperConfig(ComponentConfig):
    """The last ``slots`` turns of a conversation, each on its own z-plane through its own adapter;
    the next turn read from one plane (default: the latest turn's). Untrained = the latest turn."""

    name: Literal["context-planes"] = "context-planes"
    shape: Shape = Field((8, 8, 3), description="lattice (X, Y, Z); each slot fills one X×Y plane, so Z ≥ slots")
    channels: int = Field(6, ge=1, le=4096, description="state channels C per cell (X·Y·C ≥ D; = D for exact)")
    slots: int = Field(3, ge=1, le=64, description="turns per input k: the input is [B, k·D], oldest turn first; "
                                                   "missing earlier turns are zeros")
    planes: Optional[list[int]] = Field(None, description="z-plane of each slot, oldest first (default 0, 1, …, "
                                                          "slots−1: the latest turn on z = slots−1)")
    read: Optional[int] = Field(None, ge=0, description="slot whose plane is read (default slots−1, the latest turn)")
    adapter: Literal["learned", "exact"] = Field(
        "learned", description="learned: Linear(D → X·Y·C) per slot with orthonormal columns, output adapter "
                               "initialised to the read slot's transpose; exact: no parameters, the D dims fill "
                               "each plane in order (X·Y·C must equal D)")

    _positive = field_validator("shape")(_sizes_in_range)

    @model_validator(mode="after")
    def _depth_fits_slots(self):
        Z, k = self.shape[2], self.slots
        planes = self.planes if self.planes is not None else list(range(k))
        if k > Z:
            raise ValueError(f"the lattice depth Z = {Z} holds fewer z-planes than the {k} slots; give Z ≥ {k}")
        if len(planes) != k:
            raise ValueError(f"planes: {len(planes)} planes for {k} slots; give one z index per slot")
        bad = [p for p in planes if not 0 <= p < Z]
        if bad:
            raise ValueError(f"planes: {bad} outside the lattice's z-planes 0..{Z - 1}")
        if len(set(planes)) != k:
            raise ValueError(f"planes: {planes} puts two slots on one plane; give distinct planes")
        if self.read is not None and self.read >= k:
            raise ValueError(f"read: slot {self.read} does not exist (slots 0..{k - 1}; {k - 1} is the latest turn)")
        return self

    def check_run(self, run: Any, registry: Any) -> None:
        """A plane's X·Y·C against the teacher's D (exact: equal; learned: at least D)."""
        dim = _teacher_dim(run)
        if dim is None:
            return
        width = self.shape[0] * self.shape[1] * self.channels
        if self.adapter == "exact" and width != dim:
            raise ValueError(f"adapter: 'exact' needs X·Y·C = D; got {self.shape[0]}·{self.shape[1]}·{self.channels} = "
                             f"{width} for D = {dim} (encoder '{run.encoder.name}')")
        if self.adapter == "learned" and width < dim:
            raise ValueError(f"a plane holds {width} values (X·Y·C), fewer than the {dim} of encoder "
                             f"'{run.encoder.name}'; enlarge the plane or the channels")
