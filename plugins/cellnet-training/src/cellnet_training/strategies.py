"""The strategies: autoencoder, dialogue, curriculum, decoder and distill.

Each turns a dataset into embedding tensors (:class:`~cellnet_training.engine.TrainSet`), trains
the pipeline's reshaper + core with the shared :class:`~cellnet_training.engine.Engine`, then fits
the decoder on the training answers, as the core's ``retrieval`` strategy does.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch
from torch.nn import functional as F

from cellnet_core.errors import ConfigError, DataError
from cellnet_core.interfaces import TrainResult
from cellnet_training.engine import Engine, PipelineModel, TrainSet, ValSet, epoch_generator
from cellnet_training.losses import CombinedLoss

Embed = Callable[[Sequence[str]], torch.Tensor]


def _inner_encoder(pipeline: Any) -> Any:
    return getattr(pipeline.encoder, "inner", pipeline.encoder)


def fit_encoder_preprocessing(pipeline: Any, texts: Sequence[str]) -> None:
    """Encoders with a fitted preprocessing (``fit(texts)``) are fitted on the training texts
    before anything is encoded; the embedding cache follows the new fingerprint."""
    inner = _inner_encoder(pipeline)
    if callable(getattr(inner, "fit", None)):
        inner.fit(list(texts))


def _pairs(data: Any, split: str) -> list[Any]:
    try:
        return list(data.pairs(split))
    except (NotImplementedError, AttributeError):
        return []


def _selection_negatives(data: Any, split: str) -> dict[str, list[str]]:
    """question → its labelled wrong candidate answers, for datasets with answer selection."""
    if not callable(getattr(data, "selection", None)):
        return {}
    try:
        items = data.selection(split)
    except (NotImplementedError, DataError):
        return {}
    out: dict[str, list[str]] = {}
    for it in items or []:
        wrong = [c for c, lab in zip(it.candidates, it.labels) if not lab]
        if wrong:
            out.setdefault(it.question, []).extend(wrong)
    return out


def _bank(texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    uniq = list(dict.fromkeys(texts))
    return uniq, {t: i for i, t in enumerate(uniq)}


def pair_sets(pipeline: Any, data: Any, cfg: Any, embed_target: Embed | None = None
              ) -> tuple[TrainSet, ValSet | None, list[str]]:
    """Question → answer tensors for the train and val splits; returns the training answers too."""
    embed_target = embed_target or pipeline.encode
    train = _pairs(data, "train")
    if not train:
        raise DataError(f"training '{cfg.name}': the dataset has no training pairs")
    fit_encoder_preprocessing(pipeline, [t for p in train for t in (p.question, p.answer)])
    answers = [p.answer for p in train]
    neg_map: dict[str, list[str]] = {}
    if getattr(cfg, "selection_negatives", False) and CombinedLoss(cfg.loss).uses_negatives:
        neg_map = _selection_negatives(data, "train")
    extra = [t for p in train for t in neg_map.get(p.question, [])]
    bank_texts, index = _bank(answers + extra)
    q = pipeline.encode([p.question for p in train])
    pos = torch.tensor([index[a] for a in answers], dtype=torch.long)
    negatives = None
    if neg_map:
        rows = [[index[t] for t in dict.fromkeys(neg_map.get(p.question, [])) if index[t] != index[p.answer]]
                for p in train]
        k = max((len(r) for r in rows), default=0)
        if k:
            negatives = torch.full((len(train), k), -1, dtype=torch.long)
            for i, r in enumerate(rows):
                negatives[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    trainset = TrainSet(q, pos, embed_target(bank_texts).float(), negatives)
    val = _pairs(data, "val")[: getattr(cfg, "max_val_questions", 2000)]
    valset = None
    if val:
        vtexts, vindex = _bank([p.answer for p in val])
        valset = ValSet(pipeline.encode([p.question for p in val]),
                        torch.tensor([vindex[p.answer] for p in val], dtype=torch.long),
                        embed_target(vtexts).float())
    return trainset, valset, list(dict.fromkeys(answers))


def fit_decoder_on(pipeline: Any, texts: Sequence[str], embs: torch.Tensor | None = None) -> None:
    dec = pipeline.decoder
    if not callable(getattr(dec, "fit", None)) or not texts:
        return
    texts = list(texts)
    dec.fit(texts, pipeline.encode(texts) if embs is None else embs)


class _GradientStrategy:
    label = "train"

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def engine(self, trainset: TrainSet) -> Engine:
        return Engine(self.cfg, label=self.label)

    def fit(self, pipeline: Any, data: Any, run: Any) -> TrainResult:
        trainset, valset, answers = self.prepare(pipeline, data, run)
        result = self.engine(trainset).fit(PipelineModel(pipeline), trainset, valset, run)
        if self.cfg.fit_decoder:
            t0 = time.perf_counter()
            self.fit_decoder(pipeline, answers)
            result.metrics["decoder_seconds"] = time.perf_counter() - t0
        result.metrics["train_pairs"] = float(trainset.q.shape[0])
        pipeline.eval()
        return result

    def prepare(self, pipeline: Any, data: Any, run: Any) -> tuple[TrainSet, ValSet | None, list[str]]:
        return pair_sets(pipeline, data, self.cfg)

    def fit_decoder(self, pipeline: Any, answers: list[str]) -> None:
        fit_decoder_on(pipeline, answers)


class DialogueStrategy(_GradientStrategy):
    """Question embedding → answer embedding."""

    label = "dialogue"


class CurriculumStrategy(DialogueStrategy):
    """Dialogue with pairs ordered easy → hard by the baseline cosine between question and answer
    embedding (high cosine = easy) and a competence schedule c(epoch) ∈ (0, 1]: epoch e trains on
    the easiest ⌈c(e)·N⌉ pairs, shuffled by (seed, epoch)."""

    label = "curriculum"

    def competence(self, epoch: int) -> float:
        c = self.cfg
        t = epoch - 1
        horizon = max(1.0, c.full_at * c.epochs)
        c0 = c.start_fraction
        if c.competence == "sqrt":
            value = math.sqrt(min(1.0, t * (1 - c0 ** 2) / horizon + c0 ** 2))
        else:
            value = c0 + t * (1 - c0) / horizon
        return min(1.0, value)

    def engine(self, trainset: TrainSet) -> Engine:
        easy = F.cosine_similarity(trainset.q.float(), trainset.bank[trainset.pos].float(), dim=-1)
        order = torch.argsort(easy, descending=True, stable=True)
        n = order.numel()

        def rows(epoch: int) -> torch.Tensor:
            return order[: max(1, math.ceil(self.competence(epoch) * n))]

        return Engine(self.cfg, epoch_rows=rows, label=self.label)


class AutoencoderStrategy(_GradientStrategy):
    """Embedding → itself through the lattice."""

    label = "autoencoder"

    def _texts(self, data: Any, split: str) -> list[str]:
        if self.cfg.source == "texts":
            try:
                texts = list(data.texts(split))
            except (NotImplementedError, AttributeError):
                texts = []
            if texts:
                return texts
        return [t for p in _pairs(data, split) for t in (p.question, p.answer)]

    def prepare(self, pipeline: Any, data: Any, run: Any):
        texts = list(dict.fromkeys(self._texts(data, "train")))
        if not texts:
            raise DataError("training 'autoencoder': the dataset has no training texts")
        fit_encoder_preprocessing(pipeline, texts)
        emb = pipeline.encode(texts).float()
        trainset = TrainSet(emb, torch.arange(len(texts)), emb)
        val = list(dict.fromkeys(self._texts(data, "val")))[: self.cfg.max_val_questions]
        valset = None
        if val:
            vemb = pipeline.encode(val).float()
            valset = ValSet(vemb, torch.arange(len(val)), vemb)
        return trainset, valset, texts


class DistillStrategy(_GradientStrategy):
    """Multi-teacher distillation. Target of a pair = normalise(Σ_t w_t · normalise(P_t · e_t(answer)))
    where e_t is teacher t's embedding and P_t maps its size to the student's output size D
    (identity when equal, else a fixed seeded Gaussian projection, which keeps cosines on average).
    The decoder is fitted on the same ensemble targets of the training answers."""

    label = "distill"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self._embed: Embed | None = None

    def teachers(self, pipeline: Any, run: Any) -> Embed:
        from cellnet_core.cache import CachedEncoder
        from cellnet_core.pipeline import BuildContext

        out_dim = int(getattr(pipeline.reshaper, "out_dim", pipeline.encoder.dim))
        ctx = BuildContext(registry=pipeline.registry, device=pipeline.device, seed=run.seed,
                           config=pipeline.config)
        members = []
        for i, t in enumerate(self.cfg.teachers):
            cfg = pipeline.registry.config_for("encoder", dict(t.encoder), where=f"training.teachers[{i}].encoder")
            if cfg == pipeline.config.encoder:
                enc = pipeline.encoder
            else:
                enc = CachedEncoder(pipeline.registry.build("encoder", cfg, ctx), pipeline.cache_dir)
            proj = None
            if enc.dim != out_dim or self.cfg.projection == "random":
                if self.cfg.projection == "none":
                    raise ConfigError(f"training.teachers[{i}]: teacher size {enc.dim} ≠ student size {out_dim} "
                                      "and projection is 'none'")
                g = epoch_generator(run.seed, 0, salt=1000 + i)
                proj = torch.randn(enc.dim, out_dim, generator=g) / math.sqrt(out_dim)
            members.append((enc, proj, float(t.weight)))
        total = sum(w for _, _, w in members)

        def embed(texts: Sequence[str]) -> torch.Tensor:
            acc = torch.zeros(len(texts), out_dim)
            for enc, proj, w in members:
                e = F.normalize(enc.encode(list(texts)).float(), dim=-1)
                if proj is not None:
                    e = F.normalize(e @ proj, dim=-1)
                acc += (w / total) * e
            return F.normalize(acc, dim=-1)

        return embed

    def prepare(self, pipeline: Any, data: Any, run: Any):
        self._embed = self.teachers(pipeline, run)
        return pair_sets(pipeline, data, self.cfg, embed_target=self._embed)

    def fit_decoder(self, pipeline: Any, answers: list[str]) -> None:
        fit_decoder_on(pipeline, answers, self._embed(answers) if self._embed is not None else None)


class DecoderStrategy:
    """Fit the pipeline's decoder on texts and their teacher embeddings."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def fit(self, pipeline: Any, data: Any, run: Any) -> TrainResult:
        t0 = time.perf_counter()
        dec = pipeline.decoder
        if not callable(getattr(dec, "fit", None)):
            raise ConfigError(f"training: strategy 'decoder' needs a decoder with fit(texts, embs); "
                              f"decoder '{pipeline.config.decoder.name}' has none")
        splits = ["train", "val"] if self.cfg.include_val else ["train"]
        texts: list[str] = []
        for s in splits:
            if self.cfg.source in ("answers", "both"):
                texts += [p.answer for p in _pairs(data, s)]
            if self.cfg.source in ("texts", "both") or not texts:
                try:
                    texts += list(data.texts(s))
                except (NotImplementedError, AttributeError):
                    pass
        texts = list(dict.fromkeys(t for t in texts if t.strip()))
        if not texts:
            raise DataError("training 'decoder': the dataset gave no texts to fit the decoder on")
        if self.cfg.max_texts and len(texts) > self.cfg.max_texts:
            keep = torch.randperm(len(texts), generator=epoch_generator(run.seed, 0))[: self.cfg.max_texts]
            texts = [texts[i] for i in sorted(keep.tolist())]
        fit_encoder_preprocessing(pipeline, texts)
        embs = pipeline.encode(texts)
        out = dec.fit(texts, embs)
        metrics = {"texts": float(len(texts))}
        if isinstance(out, dict):
            metrics.update({k: float(v) for k, v in out.items() if isinstance(v, (int, float))})
        row = {"epoch": 1, **metrics}
        run.log_metrics(row)
        return TrainResult(epochs=1, best_epoch=None, metrics=metrics, seconds=time.perf_counter() - t0,
                           history=[row])


def build_autoencoder(cfg, ctx=None) -> AutoencoderStrategy:
    return AutoencoderStrategy(cfg)


def build_dialogue(cfg, ctx=None) -> DialogueStrategy:
    return DialogueStrategy(cfg)


def build_curriculum(cfg, ctx=None) -> CurriculumStrategy:
    return CurriculumStrategy(cfg)


def build_distill(cfg, ctx=None) -> DistillStrategy:
    return DistillStrategy(cfg)


def build_decoder(cfg, ctx=None) -> DecoderStrategy:
    return DecoderStrategy(cfg)
