"""The training loop every gradient-trained strategy shares.

Inputs are embeddings, not texts: ``TrainSet.q [N, D_in]`` maps onto rows of an answer bank
``TrainSet.bank [M, D_out]`` (``pos [N]``); the bank holds each answer once so that two questions
with the same answer never treat it as a negative. What the loop guarantees:

- data order depends only on ``(seed, epoch)``; RNG states, optimiser, schedule, early-stopping
  counters and best weights are checkpointed every epoch, so a resumed run ends exactly where an
  uninterrupted one does;
- under ``torch.distributed`` each of W processes runs a contiguous W-th of every global batch,
  the predictions are gathered so every process computes the same full-batch loss, and the
  gradients are summed: W processes take the same steps as one;
- a non-finite loss stops training with :class:`TrainingDivergedError`, leaving the last good
  checkpoint in place;
- validation ranks each question's own candidates (MAP / MRR, as ``cellnet eval`` does) when the
  val set carries answer selection (:class:`SelectionSet`), otherwise the val split's pooled
  answers; the chosen ``val_metric`` drives early stopping and the best checkpoint;
- ``input_noise`` and the objectives of ``mix`` (:class:`AuxObjective`) draw their noise and rows
  from generators seeded by ``(seed, epoch, step)``, so they leave resume bit-identical.

Without a terminal on stderr (logs, CI, ``nohup``) every epoch prints one line there instead of
the progress bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from cellnet_core import metrics as M
from cellnet_core.errors import CellnetError, CheckpointError, ConfigError
from cellnet_core.interfaces import TrainResult
from cellnet_core.run import progress
from cellnet_training import distributed as D
from cellnet_training.losses import CombinedLoss, LossBatch

BEST_WEIGHTS = "best.safetensors"


class TrainingDivergedError(CellnetError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """Raised after the checkpoint of epoch ``run.extras['stop_after_epoch']`` (simulates a kill)."""


@dataclass
class TrainSet:
    """Training tensors: questions ``q`` map onto rows ``pos`` of the answer ``bank`` (see the module doc)."""
    q: torch.Tensor  #: [N, D_in] inputs
    pos: torch.Tensor  #: [N] long, row of the true answer in ``bank``
    bank: torch.Tensor  #: [M, D_out] answer embeddings, each answer once
    negatives: torch.Tensor | None = None  #: [N, k] long, fixed wrong answers per row (−1: none)


@dataclass
class SelectionSet:
    """Answer selection for validation: each question ranks its own candidates.

    The candidates of all questions are flattened into entries ``(owner, index, label)``;
    ``cands`` holds each unique candidate text's embedding once."""

    q: torch.Tensor  #: [Nq, D_in] question embeddings
    cands: torch.Tensor  #: [C, D_out] unique candidate embeddings
    owner: torch.Tensor  #: [E] long, question row of each entry
    index: torch.Tensor  #: [E] long, candidate row of each entry
    labels: torch.Tensor  #: [E] long, 1 for a right candidate, 0 for a wrong one

    @property
    def questions(self) -> int:
        """Number of questions."""
        return int(self.q.shape[0])


@dataclass
class ValSet:
    """Validation tensors: pooled ranking (``q`` over the answer ``bank``, ``pos`` the true rows)
    and, for datasets with answer selection, per-question candidates (``selection``)."""

    q: torch.Tensor
    pos: torch.Tensor
    bank: torch.Tensor
    selection: SelectionSet | None = None


@dataclass
class AuxObjective:
    """A second objective of the same run (``training.mix``): its own rows, loss and weight.

    Every training step also runs one chunk of ``train`` (its rows are split into as many chunks
    per epoch as the main objective has steps) and adds ``weight × loss`` to the step's loss."""

    name: str
    weight: float
    train: TrainSet
    loss: CombinedLoss


class PipelineModel:
    """Adapts a :class:`cellnet_core.pipeline.Pipeline` to the loop: ``think`` is the model."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.device = pipeline.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline.think(x)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The pipeline's trainable parameters."""
        return [p for p in self.pipeline.parameters() if p.requires_grad]

    def named_parts(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters per pipeline part (``reshaper``, ``core``), for per-part lr scales."""
        return {name: [p for p in m.parameters() if p.requires_grad]
                for name, m in self.pipeline.trainable_modules().items()}

    def train(self, mode: bool = True) -> None:
        """Training (``True``) or evaluation mode for every part."""
        self.pipeline.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Reshaper and core tensors, keyed ``<part>.<name>``."""
        return self.pipeline.state_tensors()

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors of :meth:`state_dict` (strict)."""
        self.pipeline.load_state_tensors(tensors)

    def to_device(self, device: torch.device) -> None:
        """Move the trainable parts to ``device``."""
        for m in self.pipeline.trainable_modules().values():
            m.to(device)
        self.pipeline.device = self.device = device


class ModuleModel:
    """Adapts a plain ``nn.Module`` (the ``mlp`` baseline) to the loop."""

    def __init__(self, module: torch.nn.Module, device: Any = "cpu"):
        self.module = module.to(device)
        self.device = torch.device(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device))

    def parameters(self) -> list[torch.nn.Parameter]:
        """The module's trainable parameters."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        """Training (``True``) or evaluation mode."""
        self.module.train(mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's tensors."""
        return self.module.state_dict()

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors of :meth:`state_dict`."""
        self.module.load_state_dict(tensors)

    def to_device(self, device: torch.device) -> None:
        """Move the module to ``device``."""
        self.module.to(device)
        self.device = device


# -- seeds and RNG state -------------------------------------------------------------------------
def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch, salt)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63 - 1))


def step_generator(seed: int, epoch: int, step: int, stream: str) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch, step, stream name): independent of
    the global RNG, so drawing from it changes nothing else and a resumed run draws the same."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{step}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") % (2**63 - 1))


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, Python and NumPy RNG states as tensors and plain data (checkpointable without pickle)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# -- metrics ----------------------------------------------------------------------------------------
def ranking_metrics(pred: torch.Tensor, bank: torch.Tensor, pos: torch.Tensor) -> dict[str, float]:
    """recall@1, recall@10, MRR (ties count against the target) and mean cosine to the true answer."""
    p = F.normalize(pred.float(), dim=-1)
    b = F.normalize(bank.float(), dim=-1)
    sims = p @ b.T
    target = sims.gather(1, pos[:, None])
    ranks = (sims >= target).sum(1).float()
    return {"mrr": float((1.0 / ranks).mean()), "recall@1": float((ranks <= 1).float().mean()),
            "recall@10": float((ranks <= 10).float().mean()), "cosine": float(target.mean())}


def selection_metrics(pred: torch.Tensor, sel: SelectionSet) -> dict[str, float]:
    """MAP and MRR over each question's own candidates, scored by cosine to the prediction,
    with the functions ``cellnet eval`` uses on selection files
    (:func:`cellnet_core.metrics.mean_average_precision`, :func:`~cellnet_core.metrics.selection_mrr`;
    questions without a right candidate are left out, ties count against the right ones)."""
    p = pred.float()[sel.owner]
    c = sel.cands.float()[sel.index]
    scores = F.cosine_similarity(p, c, dim=-1)
    counts = torch.bincount(sel.owner, minlength=sel.questions).tolist()
    items = list(zip((s.tolist() for s in scores.split(counts)), (l.tolist() for l in sel.labels.split(counts))))
    return {"map": M.mean_average_precision(items), "mrr": M.selection_mrr(items)}


#: pooled metric names that move to ``pooled_<name>`` when per-question metrics take their name
_POOLED = ("mrr", "recall@1", "recall@10")


def resolve_val_metric(name: str, val: ValSet | None) -> str:
    """The metric key that ``val_metric`` names for this val set (``auto``: ``map`` on answer
    selection, ``mrr`` otherwise); :class:`ConfigError` when the val set cannot give it."""
    selection = val is not None and val.selection is not None and val.selection.questions > 0
    pooled = val is not None and val.q.shape[0] > 0
    if name == "auto":
        return "map" if selection else "mrr"
    if val is None:
        return "mrr" if name == "pooled_mrr" else name
    if name == "map" and not selection:
        raise ConfigError("training.val_metric: 'map' ranks each question's own candidates and needs a dataset "
                          "with answer selection (selection('val')); this one has none: use auto, mrr, "
                          "recall@1, recall@10, cosine or loss")
    if name != "map" and not (name == "mrr" and selection) and not pooled:
        raise ConfigError(f"training.val_metric: '{name}' needs validation pairs (pairs('val')); this dataset "
                          "gives answer selection only: use auto, map or mrr")
    if name == "pooled_mrr":  # pooled pairs are there (checked above): pooled_ only beside selection's own mrr
        return "pooled_mrr" if selection else "mrr"
    if selection and name in _POOLED and name != "mrr":
        return f"pooled_{name}"
    return name


def predict(model: Any, q: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The model's outputs ``[N, D_out]`` for inputs ``q [N, D_in]`` in evaluation mode, on CPU."""
    model.train(False)
    outs = []
    with torch.no_grad():
        for i in range(0, q.shape[0], batch):
            outs.append(model(q[i:i + batch].to(model.device)).float().cpu())
    return torch.cat(outs) if outs else q[:0]


# -- learning-rate schedule --------------------------------------------------------------------------
class Schedule:
    """Warm-up, then constant / cosine / plateau; a pure function of progress plus plateau state."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.scale = 1.0  # plateau multiplier
        self.best = -math.inf
        self.bad = 0

    def lr(self, epoch_progress: float) -> float:
        """The learning rate at ``epoch_progress`` (epochs done, fractions included)."""
        c = self.cfg
        lr = c.lr * self.scale
        if c.warmup_epochs > 0:
            lr *= min(1.0, epoch_progress / c.warmup_epochs)
        if c.schedule == "cosine" and c.epochs > 0:
            t = min(1.0, epoch_progress / c.epochs)
            lr *= c.min_lr_ratio + (1.0 - c.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        return lr

    def observe(self, score: float) -> None:
        """Feed one validation score (higher is better); the plateau schedule cuts the lr on a plateau."""
        if self.cfg.schedule != "plateau":
            return
        if score > self.best + 1e-9:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
            if self.bad > self.cfg.plateau_patience:
                self.scale *= self.cfg.plateau_factor
                self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        """The plateau state, for checkpoints."""
        return {"scale": self.scale, "best": self.best if math.isfinite(self.best) else None, "bad": self.bad}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.scale, self.bad = float(s["scale"]), int(s["bad"])
        self.best = -math.inf if s["best"] is None else float(s["best"])


def _autocast(cfg: Any, device: torch.device):
    mode = cfg.mixed_precision
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return contextlib.nullcontext(), None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


def _score(metrics: dict[str, float], name: str) -> float:
    """Higher is better."""
    return -metrics["loss"] if name == "loss" else metrics[name]


def _quiet() -> bool:
    return os.environ.get("CELLNET_QUIET") == "1"


def say(run: Any, message: str) -> None:
    """One line on stderr from the main process (nothing when ``CELLNET_QUIET=1``)."""
    if getattr(run, "is_main", True) and not _quiet():
        print(message, file=sys.stderr, flush=True)


def _metric_text(metrics: dict[str, float], key: str) -> str:
    shown = key.replace("pooled_", "pooled ")
    return f"val {shown} {metrics[key]:.4f}" if key in metrics else ""


def epoch_line(label: str, epoch: int, epochs: int, row: dict[str, Any], metrics: dict[str, float],
               key: str, best_epoch: int | None, best_score: float) -> str:
    """``dialogue epoch 3/30  train loss 0.4123  val map 0.7012  best epoch 2 (0.7100)  1.4 s``."""
    parts = [f"{label} epoch {epoch}/{epochs}" + (" (start)" if epoch == 0 else "")]
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.4f}")
    if metrics:
        parts.append(_metric_text(metrics, key))
        if best_epoch is not None and math.isfinite(best_score):
            best = -best_score if key == "loss" else best_score
            parts.append(f"best epoch {best_epoch} ({best:.4f})")
    elif epoch > 0:
        parts.append("no validation split")
    if row.get("seconds") is not None:
        parts.append(f"{row['seconds']:.1f} s")
    return "  ".join(p for p in parts if p)


def _param_groups(model: Any, params: list[torch.nn.Parameter],
                  scales: dict[str, float]) -> list[dict[str, Any]]:
    """One optimiser group per pipeline part named in ``scales`` (lr multiplied), the rest in one group.

    A part with scale 0 is frozen (its parameters are left out of the optimiser)."""
    if not scales or not hasattr(model, "named_parts"):
        return [{"params": params, "lr_scale": 1.0}]
    parts = model.named_parts()
    unknown = sorted(set(scales) - set(parts))
    if unknown:
        raise CellnetError(f"training.lr_scale: {', '.join(unknown)} is not a trainable part of this pipeline "
                           f"(trainable: {', '.join(sorted(parts)) or 'none'})")
    groups, seen = [], set()
    for name, ps in parts.items():
        seen.update(id(p) for p in ps)
        scale = float(scales.get(name, 1.0))
        if ps and scale > 0:
            groups.append({"params": ps, "lr_scale": scale})
    rest = [p for p in params if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0})
    if not groups:
        raise CellnetError("training.lr_scale: every trainable part is frozen (scale 0); nothing would train")
    return groups


# -- the loop -----------------------------------------------------------------------------------------
@dataclass
class Engine:
    """The shared training loop (see the module doc): one instance trains one model once."""
    cfg: Any
    #: optional ``fn(epoch) -> LongTensor`` of the row indices trained in that epoch (curriculum)
    epoch_rows: Callable[[int], torch.Tensor] | None = None
    label: str = "train"
    history: list[dict[str, Any]] = field(default_factory=list)
    #: further objectives trained in the same steps (``training.mix``)
    aux: list[AuxObjective] = field(default_factory=list)

    def _loss_fn(self) -> CombinedLoss:
        return CombinedLoss(self.cfg.loss, self.cfg.temperature, self.cfg.margin)

    def validate(self, model: Any, val: ValSet | None, loss_fn: CombinedLoss) -> dict[str, float]:
        """Per-question ``map``/``mrr`` when ``val.selection`` is set (the pooled ranking's MRR and
        recalls are then ``pooled_mrr``, ``pooled_recall@1``, …); otherwise pooled ``mrr``,
        ``recall@1``, ``recall@10``; ``cosine`` and ``loss`` over the pooled pairs."""
        if val is None:
            return {}
        out: dict[str, float] = {}
        sel = val.selection
        if sel is not None and sel.questions:
            out.update(selection_metrics(predict(model, sel.q), sel))
        if val.q.shape[0]:
            pred = predict(model, val.q)
            pooled = ranking_metrics(pred, val.bank, val.pos)
            if out:
                pooled = {(f"pooled_{k}" if k in _POOLED else k): v for k, v in pooled.items()}
            out.update(pooled)
            with torch.no_grad():
                out["loss"] = float(loss_fn(LossBatch(pred, val.bank.float(), val.pos)))
        return out

    def _mine(self, model: Any, train: TrainSet, k: int) -> torch.Tensor:
        """[N, k] bank rows most similar to the current prediction, the true answer excluded."""
        pred = F.normalize(predict(model, train.q), dim=-1)
        bank = F.normalize(train.bank.float(), dim=-1)
        k = min(k, bank.shape[0] - 1)
        out = []
        for i in range(0, pred.shape[0], 1024):
            sims = pred[i:i + 1024] @ bank.T
            sims.scatter_(1, train.pos[i:i + 1024, None], float("-inf"))
            out.append(sims.topk(k, dim=1).indices)
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

    def fit(self, model: Any, train: TrainSet, val: ValSet | None, run: Any) -> TrainResult:
        """Train ``model`` on ``train``, validating on ``val`` every epoch, in run directory ``run``
        (resumed from its checkpoint when ``run.resume``); returns the :class:`TrainResult`."""
        cfg = self.cfg
        t_start = time.perf_counter()
        device = torch.device(model.device)
        D.setup(run, device.type)
        rank, world = run.rank, run.world_size
        if world > 1 and device.type == "cuda" and torch.cuda.current_device() != (device.index or 0):
            # one GPU per process: the pipeline was built on the default GPU before the group existed
            device = torch.device("cuda", torch.cuda.current_device())
            model.to_device(device)
        params = model.parameters()
        loss_fn = self._loss_fn()
        n = train.q.shape[0]
        # one optimisation step covers accumulate × batch_size rows (training.accumulate)
        step_rows = cfg.batch_size * int(getattr(cfg, "accumulate", 1) or 1)
        steps_nominal = max(1, math.ceil(n / step_rows))
        run_dir = Path(run.run_dir)

        groups = _param_groups(model, params, getattr(cfg, "lr_scale", {}) or {})
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay) if params else None
        sched = Schedule(cfg)
        amp_ctx, scaler = _autocast(cfg, device)
        key = resolve_val_metric(getattr(cfg, "val_metric", "mrr"), val)
        self.val_key = key

        start_epoch, best_score, best_epoch, bad_epochs = 1, -math.inf, None, 0
        best_state: dict[str, torch.Tensor] | None = None
        mined: torch.Tensor | None = None
        init: dict[str, float] = {}
        state = run.load_state() if run.resume else None
        if state is not None:
            if state.get("label") != self.label:
                raise CheckpointError(f"{run_dir}: its training state is for '{state.get('label')}', "
                                      f"not '{self.label}'")
            model.load_state_dict(state["model"])
            if opt is not None and state.get("optimizer") is not None:
                opt.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
            sched.load_state_dict(state["schedule"])
            b = state["best"]
            best_score = -math.inf if b["score"] is None else float(b["score"])
            best_epoch, bad_epochs = b["epoch"], int(b["bad"])
            if best_epoch is not None and (run_dir / BEST_WEIGHTS).exists():
                best_state = run.load_tensors(BEST_WEIGHTS)  # verified against the state's record
            if state.get("mined") is not None:
                mined = state["mined"]
            set_rng_state(state["rng"])
            start_epoch = int(state["epoch"]) + 1
            if run.is_main:
                run.truncate_metrics(int(state["epoch"]))
            say(run, f"{self.label}: resumed after epoch {state['epoch']} of {cfg.epochs}")
        else:
            if run.is_main:
                run.truncate_metrics(-1)  # a fresh run starts a fresh metrics log
            seed_everything(run.seed)
            init = self.validate(model, val, loss_fn)
            if init:
                # the untrained model competes for "best" too: training must beat where it started
                best_score, best_epoch = _score(init, key), 0
                best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
                run.stage_tensors(BEST_WEIGHTS, best_state, metadata={"epoch": "0"})
                run.log_metrics({"epoch": 0, **{f"val_{k}": v for k, v in init.items()}, "best_epoch": 0})

        stop_after = run.extras.get("stop_after_epoch")
        epochs_left = range(start_epoch, cfg.epochs + 1)
        bar = progress(epochs_left, desc=self.label, total=cfg.epochs, initial=start_epoch - 1) \
            if run.is_main else epochs_left
        # without a visible bar (stderr not a terminal: logs, CI) one line per epoch instead
        lines = run.is_main and not _quiet() and bool(getattr(bar, "disable", True))
        if lines and init:
            say(run, epoch_line(self.label, 0, cfg.epochs, {}, init, key, best_epoch, best_score))
        last_epoch = start_epoch - 1
        stopped_early = False
        try:
            for epoch in bar:
                t0 = time.perf_counter()
                rows = self.epoch_rows(epoch) if self.epoch_rows is not None else torch.arange(n)
                if cfg.hard_negatives and loss_fn.uses_negatives and params and (
                        mined is None or (epoch - 1) % cfg.mine_every == 0):
                    mined = self._mine(model, train, cfg.hard_negatives)
                order = rows[torch.randperm(rows.numel(), generator=epoch_generator(run.seed, epoch))]
                batches = [order[i:i + step_rows] for i in range(0, order.numel(), step_rows)]
                # each mixed objective: one pass over its rows per epoch, in as many chunks as there are steps
                aux_chunks = [torch.tensor_split(
                    torch.randperm(a.train.q.shape[0], generator=step_generator(run.seed, epoch, 0, f"mix:{a.name}")),
                    max(1, len(batches))) for a in self.aux]
                model.train(True)
                total, count = 0.0, 0
                aux_total = [0.0] * len(self.aux)
                for step, idx in enumerate(batches):
                    lr = sched.lr(epoch - 1 + (step + 1) / max(1, len(batches)))
                    aux_idx = [chunks[step] for chunks in aux_chunks]
                    loss, aux_values = self._step(model, opt, scaler, amp_ctx, loss_fn, train, idx, mined, lr,
                                                  rank, world, (run.seed, epoch, step), aux_idx)
                    value = float(loss)
                    if not math.isfinite(value):
                        where = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir}"
                                 if epoch > 1 else "no checkpoint was written")
                        raise TrainingDivergedError(
                            f"training.loss became {value} at epoch {epoch}, step {step + 1}; {where}; "
                            f"lower training.lr (now {cfg.lr:g}) or set training.grad_clip")
                    total += value * idx.numel()
                    count += idx.numel()
                    for j, v in enumerate(aux_values):
                        aux_total[j] += v
                metrics = self.validate(model, val, loss_fn)
                row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(1, count),
                                       "lr": sched.lr(epoch), "pairs": int(rows.numel())}
                for j, a in enumerate(self.aux):  # mean over steps, unweighted
                    row[f"train_{a.name}_loss"] = aux_total[j] / max(1, len(batches))
                row.update({f"val_{k}": v for k, v in metrics.items()})
                if metrics:
                    score = _score(metrics, key)
                    sched.observe(score)
                else:  # no validation split: the last epoch is the best
                    score = float(epoch)
                if score > best_score + 1e-12:
                    best_score, best_epoch, bad_epochs = score, epoch, 0
                    best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
                    # committed with this epoch's state (a kill in between keeps the pair consistent)
                    run.stage_tensors(BEST_WEIGHTS, best_state, metadata={"epoch": str(epoch)})
                else:
                    bad_epochs += 1
                row["best_epoch"] = best_epoch
                row["seconds"] = time.perf_counter() - t0
                self.history.append(row)
                run.log_metrics(row)
                run.save_state({
                    "label": self.label,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict() if opt is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "schedule": sched.state_dict(),
                    "best": {"score": best_score if math.isfinite(best_score) else None,
                             "epoch": best_epoch, "bad": bad_epochs},
                    "mined": mined,
                    "rng": rng_state(),
                })
                last_epoch = epoch
                if hasattr(bar, "set_postfix"):
                    post = {"loss": f"{row['train_loss']:.4f}"}
                    if metrics:
                        post[f"val_{key}"] = f"{metrics[key]:.4f}"
                    bar.set_postfix(post)
                if lines:
                    say(run, epoch_line(self.label, epoch, cfg.epochs, row, metrics, key, best_epoch, best_score))
                if stop_after is not None and epoch >= int(stop_after) and epoch < cfg.epochs:
                    raise TrainingInterrupted(f"stopped after epoch {epoch} (run.extras['stop_after_epoch'])")
                if cfg.early_stopping and bad_epochs >= cfg.early_stopping:
                    stopped_early = True
                    say(run, f"{self.label}: stopped early after epoch {epoch}: val {key.replace('pooled_', 'pooled ')} "
                             f"did not improve for {bad_epochs} epochs; best epoch {best_epoch}")
                    break
        finally:
            if hasattr(bar, "close"):
                bar.close()
            if run.is_main and getattr(cfg, "plots", False):
                from cellnet_training.plots import plot_curves

                plot_curves(run_dir, run.read_metrics(), key)

        if cfg.restore_best and best_state is not None:
            model.load_state_dict(best_state)
        final = self.validate(model, val, loss_fn)
        return TrainResult(epochs=last_epoch, best_epoch=best_epoch,
                           metrics={**{f"val_{k}": v for k, v in final.items()},
                                    "stopped_early": float(stopped_early)},
                           seconds=time.perf_counter() - t_start, history=run.read_metrics())

    @staticmethod
    def _columns(loss_fn: CombinedLoss, train: TrainSet, idx: torch.Tensor, mined: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The answer columns of batch ``idx`` (true answers, mined and fixed negatives, each once)
        and each row's true column among them."""
        parts = [train.pos[idx]]
        if loss_fn.uses_negatives:
            if mined is not None:
                parts.append(mined[idx].reshape(-1))
            if train.negatives is not None:
                neg = train.negatives[idx].reshape(-1)
                parts.append(neg[neg >= 0])
        cols = torch.unique(torch.cat(parts))
        return cols, torch.searchsorted(cols, train.pos[idx])

    def _batch_loss(self, model, amp_ctx, loss_fn: CombinedLoss, train: TrainSet, idx: torch.Tensor,
                    mined: torch.Tensor | None, rank: int, world: int, noise: torch.Generator | None
                    ) -> torch.Tensor:
        """The full-batch loss of rows ``idx`` (this process runs its shard, see the module doc)."""
        device = torch.device(model.device)
        cols, pos = self._columns(loss_fn, train, idx, mined)
        local, _ = D.shard(idx, rank, world)
        x = train.q[local]
        if noise is not None:
            # drawn for the whole batch, then sharded: W processes add the noise one process would
            eps = torch.randn(idx.numel(), x.shape[1], generator=noise)
            where, _ = D.shard(torch.arange(idx.numel()), rank, world)
            x = x + float(self.cfg.input_noise) * eps[where].to(x.dtype)
        with amp_ctx:
            pred_local = model(x.to(device))
        pred_local = pred_local.float()
        pred = D.gather_rows(pred_local, idx.numel(), world)
        return loss_fn(LossBatch(pred, train.bank[cols].to(device).float(), pos.to(device)))

    def _step(self, model, opt, scaler, amp_ctx, loss_fn, train: TrainSet, idx: torch.Tensor,
              mined: torch.Tensor | None, lr: float, rank: int, world: int,
              where: tuple[int, int, int] = (0, 0, 0), aux_idx: list[torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, list[float]]:
        """One optimisation step; returns (the step's total loss, each mixed objective's loss).

        ``where`` is ``(seed, epoch, step)``: it seeds the input noise."""
        sigma = float(getattr(self.cfg, "input_noise", 0.0) or 0.0)
        seed, epoch, step = where

        def noise(stream: str) -> torch.Generator | None:
            return step_generator(seed, epoch, step, stream) if sigma > 0 else None

        if opt is not None and int(getattr(self.cfg, "accumulate", 1) or 1) > 1:
            return self._accumulated_step(model, opt, scaler, amp_ctx, loss_fn, train, idx, mined, lr, rank, world,
                                          noise, aux_idx)
        loss = self._batch_loss(model, amp_ctx, loss_fn, train, idx, mined, rank, world, noise("noise"))
        aux_values: list[float] = []
        for a, rows in zip(self.aux, aux_idx or []):
            if rows.numel() == 0:
                aux_values.append(0.0)
                continue
            term = self._batch_loss(model, amp_ctx, a.loss, a.train, rows, None, rank, world,
                                    noise(f"noise:{a.name}"))
            aux_values.append(float(term.detach()))
            loss = loss + a.weight * term
        if opt is None:
            return loss.detach(), aux_values
        if not torch.isfinite(loss):
            return loss.detach(), aux_values
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=False)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        D.sum_gradients(params, world)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return loss.detach(), aux_values

    # -- gradient accumulation (training.accumulate) -------------------------------------------------
    def _accumulated_step(self, model, opt, scaler, amp_ctx, loss_fn, train: TrainSet, idx: torch.Tensor,
                          mined: torch.Tensor | None, lr: float, rank: int, world: int,
                          noise: Callable[[str], torch.Generator | None], aux_idx: list[torch.Tensor] | None
                          ) -> tuple[torch.Tensor, list[float]]:
        """One optimisation step over ``idx`` run ``training.accumulate`` micro-batches at a time.

        The loss (in-batch negatives included) is the full batch's: every micro-batch is first
        run without a graph, the loss of the whole batch gives the gradient with respect to each
        prediction, and each micro-batch is then run again with its graph and back-propagated
        with its rows of that gradient (gradient caching). The RNG is replayed per micro-batch so
        both passes draw the same numbers. Memory is that of one micro-batch of lattice
        activations; the update is the one the whole batch gives."""
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=False)
        total = self._accumulate(model, amp_ctx, loss_fn, train, idx, mined, rank, world, noise("noise"), 1.0, scaler)
        aux_values: list[float] = []
        for a, rows in zip(self.aux, aux_idx or []):
            if rows.numel() == 0:
                aux_values.append(0.0)
                continue
            v = self._accumulate(model, amp_ctx, a.loss, a.train, rows, None, rank, world, noise(f"noise:{a.name}"),
                                 a.weight, scaler)
            aux_values.append(v)
            total += a.weight * v
        loss = torch.tensor(total)
        if not math.isfinite(total):
            opt.zero_grad(set_to_none=False)  # the caller reports the divergence; no step on it
            return loss, aux_values
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        D.sum_gradients(params, world)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return loss, aux_values

    def _accumulate(self, model, amp_ctx, loss_fn: CombinedLoss, train: TrainSet, idx: torch.Tensor,
                    mined: torch.Tensor | None, rank: int, world: int, noise: torch.Generator | None,
                    weight: float, scaler: Any) -> float:
        """Back-propagate ``weight`` × the full-batch loss of rows ``idx`` in micro-batches; returns the loss."""
        device = torch.device(model.device)
        cols, pos = self._columns(loss_fn, train, idx, mined)
        local, _ = D.shard(idx, rank, world)
        x = train.q[local]
        if noise is not None:
            eps = torch.randn(idx.numel(), x.shape[1], generator=noise)
            where, _ = D.shard(torch.arange(idx.numel()), rank, world)
            x = x + float(self.cfg.input_noise) * eps[where].to(x.dtype)
        k = int(getattr(self.cfg, "accumulate", 1) or 1)
        chunks = torch.tensor_split(torch.arange(x.shape[0]), max(1, min(k, x.shape[0])))
        states, outs = [], []
        with torch.no_grad():
            for c in chunks:
                states.append(_rng_snapshot(device))
                with amp_ctx:
                    outs.append(model(x[c].to(device)).float())
        pred_local = torch.cat(outs).requires_grad_(True)
        pred = D.gather_rows(pred_local, idx.numel(), world)
        loss = loss_fn(LossBatch(pred, train.bank[cols].to(device).float(), pos.to(device)))
        scaled = loss * weight
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        grad = pred_local.grad
        for c, state in zip(chunks, states):
            _rng_restore(state, device)
            with amp_ctx:
                out = model(x[c].to(device)).float()
            out.backward(grad[c.to(grad.device)])
        return float(loss.detach())


def _rng_snapshot(device: torch.device) -> tuple[torch.Tensor, Any]:
    """The CPU (and this CUDA device's) RNG state, to replay a forward pass."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _rng_restore(state: tuple[torch.Tensor, Any], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
