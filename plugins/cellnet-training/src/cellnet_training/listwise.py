"""The ``listwise`` strategy: train a pair-scoring pipeline on answer-selection data.

For each training question the pipeline scores its own candidates (the labelled right and wrong
sentences) plus the right answers of ``in_batch`` other questions of the batch; the loss is the
softmax cross-entropy of the positives against all of them::

    loss_q = logsumexp(s / τ over every candidate of q) − logsumexp(s / τ over q's positives)

Validation ranks each validation question's *own* candidates (MAP and MRR, the measures ``cellnet
eval`` reports for selection files); early stopping and the best checkpoint follow ``val_metric``.
Epoch 0 is the untrained scorer (the identity cosine): training has to beat it, and a run that
never does ends with ``best_epoch = 0``. Every epoch is checkpointed (weights, optimiser, RNG,
best so far) and ``--resume`` continues from the last one.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Sequence

import torch

from cellnet_core import metrics as M
from cellnet_core.checkpoint import load_tensors, save_tensors
from cellnet_core.errors import CheckpointError, ConfigError, DataError
from cellnet_core.interfaces import TrainResult
from cellnet_training.engine import BEST_WEIGHTS, epoch_generator, rng_state, seed_everything, set_rng_state

LABEL = "listwise"


def selection_items(data: Any, split: str, limit: int | None = None) -> tuple[list[Any], int]:
    """The split's selection items that have a positive (at most ``limit``), and how many had none."""
    if not callable(getattr(data, "selection", None)):
        raise ConfigError(f"training 'listwise' needs a dataset with answer selection (selection items: a "
                          f"question, candidates, 0/1 labels), e.g. data: {{name: squad}}; "
                          f"'{type(data).__name__}' has none")
    try:
        items = list(data.selection(split) or [])
    except NotImplementedError:
        items = []
    kept = [it for it in items if any(it.labels)]
    if limit is not None:
        kept = kept[:limit]
    return kept, len(items) - len([it for it in items if any(it.labels)])


def score_items(pipeline: Any, items: Sequence[Any], batch: int = 512) -> list[tuple[list[float], list[int]]]:
    """Every item's candidates scored by the pipeline (no gradients): ``[(scores, labels), ...]``."""
    qs = [it.question for it in items for _ in it.candidates]
    cs = [c for it in items for c in it.candidates]
    pipeline.eval()
    with torch.no_grad():
        flat = pipeline.score_pairs(qs, cs, batch=batch).float().cpu().tolist() if cs else []
    out, at = [], 0
    for it in items:
        n = len(it.candidates)
        out.append((flat[at:at + n], list(it.labels)))
        at += n
    return out


def selection_metrics(scored: Sequence[tuple[Sequence[float], Sequence[int]]]) -> dict[str, float]:
    """Per-question MAP and MRR."""
    return {"map": M.mean_average_precision(scored), "mrr": M.selection_mrr(scored)}


class ListwiseStrategy:
    """See the module docstring. ``cfg`` is a :class:`~cellnet_training.config.ListwiseConfig`."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # -- data -------------------------------------------------------------------------------
    def _batch_pairs(self, items: Sequence[Any], gen: torch.Generator
                     ) -> tuple[list[str], list[str], list[tuple[int, int, list[int]]]]:
        """Flat (question, candidate) lists of one batch and, per question, ``(start, count,
        positive offsets)`` into them."""
        cfg = self.cfg
        qs: list[str] = []
        cs: list[str] = []
        groups = []
        positives = [[c for c, lab in zip(it.candidates, it.labels) if lab] for it in items]
        for i, it in enumerate(items):
            pairs = list(zip(it.candidates, it.labels))
            if cfg.max_candidates and len(pairs) > cfg.max_candidates:
                pos = [p for p in pairs if p[1]]
                neg = [p for p in pairs if not p[1]]
                keep = torch.randperm(len(neg), generator=gen)[: max(0, cfg.max_candidates - len(pos))]
                pairs = pos + [neg[int(j)] for j in keep]
            own = {c for c, _ in pairs}
            others = [j for j in range(len(items)) if j != i]
            if cfg.in_batch and others:
                pick = torch.randperm(len(others), generator=gen)[: cfg.in_batch]
                for j in pick:
                    for c in positives[others[int(j)]][:1]:
                        if c not in own:
                            pairs.append((c, 0))
                            own.add(c)
            start = len(cs)
            for c, _ in pairs:
                qs.append(it.question)
                cs.append(c)
            groups.append((start, len(pairs), [k for k, (_, lab) in enumerate(pairs) if lab]))
        return qs, cs, groups

    def _loss(self, scores: torch.Tensor, groups: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        tau = self.cfg.temperature
        losses = []
        for start, count, pos in groups:
            s = scores[start:start + count] / tau
            losses.append(torch.logsumexp(s, 0) - torch.logsumexp(s[pos], 0))
        return torch.stack(losses).mean()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, pipeline: Any, data: Any, run: Any) -> TrainResult:
        """Train the pipeline's pair scorer on the dataset's answer-selection items; keeps the epoch
        with the best validation MAP."""
        cfg = self.cfg
        t_start = time.perf_counter()
        if not pipeline.scores_pairs:
            raise ConfigError("training 'listwise' trains a pair scorer: the reshaper must score (question, "
                              "candidate) pairs, e.g. reshaper: {name: interaction-grid} or {name: pair-faces}")
        train, no_pos = selection_items(data, "train", cfg.max_train_questions)
        if not train:
            raise DataError("training 'listwise': the dataset's training split has no selection item with a "
                            "positive candidate")
        val, _ = selection_items(data, "val", cfg.max_val_questions)
        if no_pos and run.is_main:
            print(f"listwise: {no_pos} training question(s) without a positive candidate left out", file=sys.stderr)
        # encode everything once (on-disk caches); pair_inputs then reads from memory
        texts = list(dict.fromkeys([t for it in train + val for t in [it.question, *it.candidates]]))
        self._say(run, f"listwise: {len(train)} training / {len(val)} validation questions, "
                       f"{len(texts)} texts to encode (cached after the first run)")
        if getattr(pipeline.reshaper, "uses_tokens", False):
            pipeline.encode_tokens(texts)  # fills the embedding cache from the same passes
        pipeline.encode(texts)
        if callable(getattr(pipeline.reshaper, "fit_tokens", None)) and not run.resume:
            # statistics of the training candidates (e.g. idf), before epoch 0 so it stays the identity
            pipeline.reshaper.fit_tokens(pipeline, list(dict.fromkeys(c for it in train for c in it.candidates)))
        params = [p for p in pipeline.parameters() if p.requires_grad]
        groups = self._param_groups(pipeline)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
        run_dir = run.run_dir
        best_score, best_epoch, bad = -math.inf, 0, 0
        best_state: dict[str, torch.Tensor] | None = None
        start_epoch = 1
        state = run.load_state() if run.resume else None
        if state is not None:
            if state.get("label") != LABEL:
                raise CheckpointError(f"{run_dir}: its training state is for '{state.get('label')}', not '{LABEL}'")
            pipeline.load_state_tensors(state["model"])
            if opt is not None and state.get("optimizer") is not None:
                opt.load_state_dict(state["optimizer"])
            b = state["best"]
            best_score = -math.inf if b["score"] is None else float(b["score"])
            best_epoch, bad = int(b["epoch"]), int(b["bad"])
            if (run_dir / BEST_WEIGHTS).exists():
                best_state = load_tensors(run_dir / BEST_WEIGHTS)
            set_rng_state(state["rng"])
            start_epoch = int(state["epoch"]) + 1
            if run.is_main:
                run.truncate_metrics(int(state["epoch"]))
        else:
            if run.is_main:
                run.truncate_metrics(-1)
            seed_everything(run.seed)
            if cfg.init_from:
                from cellnet_training.strategies import load_init_weights

                load_init_weights(pipeline, cfg.init_from, run)
            init = selection_metrics(score_items(pipeline, val)) if val else {}
            best_state = {k: v.detach().clone().cpu() for k, v in pipeline.state_tensors().items()}
            if init:
                best_score = init[cfg.val_metric]
            if run.is_main:
                save_tensors(run_dir / BEST_WEIGHTS, best_state, metadata={"epoch": "0"})
            run.log_metrics({"epoch": 0, **{f"val_{k}": v for k, v in init.items()}, "best_epoch": 0})
            self._say(run, f"listwise: epoch 0 (untrained) " + " ".join(f"val_{k}={v:.4f}" for k, v in init.items()))
        steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
        last = start_epoch - 1
        stopped_early = False
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            gen = epoch_generator(run.seed, epoch, salt=17)
            order = torch.randperm(len(train), generator=gen)
            pipeline.train(True)
            total, count = 0.0, 0
            last_note = time.perf_counter()
            for step in range(steps_per_epoch):
                if time.perf_counter() - last_note > cfg.progress_seconds and count:
                    last_note = time.perf_counter()
                    self._say(run, f"listwise: epoch {epoch}/{cfg.epochs} step {step}/{steps_per_epoch} "
                                   f"loss {total / count:.4f} ({last_note - t0:.0f}s)")
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                batch = [train[int(i)] for i in idx]
                qs, cs, grp = self._batch_pairs(batch, gen)
                progress = (epoch - 1 + (step + 1) / steps_per_epoch)
                lr = cfg.lr * min(1.0, progress / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else cfg.lr
                if cfg.schedule == "cosine" and cfg.epochs > 0:
                    lr *= cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress / cfg.epochs))
                with torch.enable_grad():
                    scores = pipeline.score_pairs(qs, cs, batch=len(qs))
                    loss = self._loss(scores.float(), grp)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise DataError(f"training.loss became {value} at epoch {epoch}, step {step + 1}; "
                                        f"lower training.lr (now {cfg.lr:g})")
                    if opt is not None:
                        for g in opt.param_groups:
                            g["lr"] = lr * g.get("lr_scale", 1.0)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if cfg.grad_clip:
                            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                        opt.step()
                total += value * len(batch)
                count += len(batch)
            metrics = selection_metrics(score_items(pipeline, val)) if val else {}
            score = metrics.get(cfg.val_metric, float(epoch))
            if score > best_score + 1e-9:
                best_score, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().clone().cpu() for k, v in pipeline.state_tensors().items()}
                if run.is_main:
                    save_tensors(run_dir / BEST_WEIGHTS, best_state, metadata={"epoch": str(epoch)})
            else:
                bad += 1
            row = {"epoch": epoch, "train_loss": total / max(1, count), "lr": lr,
                   **{f"val_{k}": v for k, v in metrics.items()}, "best_epoch": best_epoch,
                   "seconds": time.perf_counter() - t0}
            run.log_metrics(row)
            run.save_state({"label": LABEL, "epoch": epoch,
                            "model": {k: v.detach().cpu() for k, v in pipeline.state_tensors().items()},
                            "optimizer": opt.state_dict() if opt is not None else None,
                            "best": {"score": best_score if math.isfinite(best_score) else None,
                                     "epoch": best_epoch, "bad": bad},
                            "rng": rng_state()})
            self._say(run, f"listwise: epoch {epoch}/{cfg.epochs} loss {row['train_loss']:.4f} "
                           + " ".join(f"val_{k}={v:.4f}" for k, v in metrics.items())
                           + f" best epoch {best_epoch} ({row['seconds']:.1f}s)")
            last = epoch
            if cfg.early_stopping and bad >= cfg.early_stopping:
                stopped_early = True
                break
        if cfg.restore_best and best_state is not None:
            pipeline.load_state_tensors(best_state)
        final = selection_metrics(score_items(pipeline, val)) if val else {}
        if cfg.fit_decoder and callable(getattr(pipeline.decoder, "fit", None)):
            answers = list(dict.fromkeys(c for it in train for c, lab in zip(it.candidates, it.labels) if lab))
            self._say(run, f"fitting decoder '{type(pipeline.decoder).__name__}' on {len(answers)} answer sentences")
            pipeline.decoder.fit(answers, pipeline.encode(answers))
        return TrainResult(epochs=last, best_epoch=best_epoch,
                           metrics={**{f"val_{k}": v for k, v in final.items()},
                                    "stopped_early": float(stopped_early)},
                           seconds=time.perf_counter() - t_start, history=run.read_metrics())

    def _param_groups(self, pipeline: Any) -> list[dict[str, Any]]:
        scales = dict(self.cfg.lr_scale or {})
        groups = []
        for name, module in pipeline.trainable_modules().items():
            ps = [p for p in module.parameters() if p.requires_grad]
            scale = float(scales.get(name, 1.0))
            if ps and scale > 0:
                groups.append({"params": ps, "lr_scale": scale})
        return groups or [{"params": [], "lr_scale": 1.0}]

    @staticmethod
    def _say(run: Any, line: str) -> None:
        if getattr(run, "is_main", True):
            print(line, file=sys.stderr, flush=True)


def build_listwise(cfg, ctx) -> ListwiseStrategy:
    """Factory of the ``listwise`` strategy."""
    return ListwiseStrategy(cfg)
