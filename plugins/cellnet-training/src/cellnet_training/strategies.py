"""The strategies: autoencoder, dialogue, curriculum, decoder and distill.

Each turns a dataset into embedding tensors (:class:`~cellnet_training.engine.TrainSet`), trains
the pipeline's reshaper + core with the shared :class:`~cellnet_training.engine.Engine`, then fits
the decoder on the training answers, as the core's ``retrieval`` strategy does.

Staged training: ``init_from`` warm-starts reshaper + core from another run (:func:`load_init_weights`);
``mix`` trains a second objective in the same steps (:meth:`_GradientStrategy.mix_objectives`).
Validation on datasets with answer selection ranks each question's own candidates
(:func:`selection_set`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn import functional as F

from cellnet_core.errors import CheckpointError, ConfigError, DataError
from cellnet_core.interfaces import TrainResult
from cellnet_training.engine import (AuxObjective, Engine, PipelineModel, SelectionSet, TrainSet, ValSet,
                                     epoch_generator, say)
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


def _selection_items(data: Any, split: str) -> list[Any]:
    """``data.selection(split)`` for datasets with answer selection; [] for the others."""
    if not callable(getattr(data, "selection", None)):
        return []
    try:
        return list(data.selection(split) or [])
    except (NotImplementedError, DataError):
        return []


def _selection_negatives(data: Any, split: str) -> dict[str, list[str]]:
    """question → its labelled wrong candidate answers, for datasets with answer selection."""
    out: dict[str, list[str]] = {}
    for it in _selection_items(data, split):
        wrong = [c for c, lab in zip(it.candidates, it.labels) if not lab]
        if wrong:
            out.setdefault(it.question, []).extend(wrong)
    return out


def _bank(texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    uniq = list(dict.fromkeys(texts))
    return uniq, {t: i for i, t in enumerate(uniq)}


def selection_set(pipeline: Any, data: Any, split: str, limit: int, embed_target: Embed | None = None
                  ) -> SelectionSet | None:
    """The first ``limit`` answer-selection items of ``split`` as tensors (None for datasets
    without selection): question embeddings, and each unique candidate text embedded once by
    ``embed_target`` (the space the pipeline's output is compared in)."""
    items = [it for it in _selection_items(data, split) if it.candidates][:limit]
    if not items:
        return None
    embed_target = embed_target or pipeline.encode
    texts, index = _bank([c for it in items for c in it.candidates])
    owner = [i for i, it in enumerate(items) for _ in it.candidates]
    for it in items:
        if len(it.labels) != len(it.candidates):
            raise DataError(f"{split} selection item '{it.question[:60]}': {len(it.candidates)} candidates "
                            f"but {len(it.labels)} labels")
    return SelectionSet(
        q=pipeline.encode([it.question for it in items]).float(),
        cands=embed_target(texts).float(),
        owner=torch.tensor(owner, dtype=torch.long),
        index=torch.tensor([index[c] for it in items for c in it.candidates], dtype=torch.long),
        labels=torch.tensor([1 if lab else 0 for it in items for lab in it.labels], dtype=torch.long))


def pair_trainset(pipeline: Any, data: Any, cfg: Any, embed_target: Embed | None = None, *,
                  with_negatives: bool = True, what: str | None = None, train: list[Any] | None = None
                  ) -> tuple[TrainSet, list[str]]:
    """Question → answer tensors of the train split (``train``: its pairs, when already read),
    with the labelled wrong candidates of answer-selection data as fixed negatives when
    ``with_negatives`` and the loss uses them; returns the training answers too."""
    embed_target = embed_target or pipeline.encode
    train = _pairs(data, "train") if train is None else train
    if not train:
        raise DataError(f"training '{what or cfg.name}': the dataset has no training pairs")
    answers = [p.answer for p in train]
    neg_map: dict[str, list[str]] = {}
    if with_negatives and getattr(cfg, "selection_negatives", False) and CombinedLoss(cfg.loss).uses_negatives:
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
    return TrainSet(q, pos, embed_target(bank_texts).float(), negatives), answers


def pair_sets(pipeline: Any, data: Any, cfg: Any, embed_target: Embed | None = None
              ) -> tuple[TrainSet, ValSet | None, list[str]]:
    """Question → answer tensors for the train and val splits; returns the training answers too.

    For datasets with answer selection the val set also carries ``selection("val")``
    (:func:`selection_set`), so that validation ranks each question's own candidates."""
    embed_target = embed_target or pipeline.encode
    train = _pairs(data, "train")
    if not train:
        raise DataError(f"training '{cfg.name}': the dataset has no training pairs")
    fit_encoder_preprocessing(pipeline, [t for p in train for t in (p.question, p.answer)])
    trainset, answers = pair_trainset(pipeline, data, cfg, embed_target, train=train)
    limit = getattr(cfg, "max_val_questions", 2000)
    val = _pairs(data, "val")[:limit]
    sel = selection_set(pipeline, data, "val", limit, embed_target)
    valset = None
    if val:
        vtexts, vindex = _bank([p.answer for p in val])
        valset = ValSet(pipeline.encode([p.question for p in val]),
                        torch.tensor([vindex[p.answer] for p in val], dtype=torch.long),
                        embed_target(vtexts).float(), sel)
    elif sel is not None:  # selection without validation pairs: per-question ranking only
        valset = ValSet(sel.q[:0], torch.zeros(0, dtype=torch.long), sel.cands[:0], sel)
    return trainset, valset, list(dict.fromkeys(answers))


def sentence_texts(data: Any, split: str, source: str = "texts") -> list[str]:
    """The sentences an autoencoder reconstructs: ``texts(split)`` (``source="texts"``; when the
    dataset has none, the questions and answers of its pairs) or the pairs' questions and answers."""
    if source == "texts":
        try:
            texts = list(data.texts(split))
        except (NotImplementedError, AttributeError):
            texts = []
        if texts:
            return texts
    return [t for p in _pairs(data, split) for t in (p.question, p.answer)]


def load_init_weights(pipeline: Any, source: str | Path, run: Any = None) -> int:
    """Replace the pipeline's reshaper + core weights with those of run directory ``source``
    (``training.init_from``); returns the number of tensors loaded.

    The source run's manifest is verified first; every tensor this config holds must be there
    with the same shape, and the source must hold nothing else. Any mismatch raises
    :class:`CheckpointError` naming the tensor (and both shapes) — exit code 2 in the CLI."""
    from cellnet_core.checkpoint import MANIFEST, WEIGHTS, load_tensors, verify_manifest

    src = Path(source)
    where = "training.init_from"
    if not src.is_dir():
        raise CheckpointError(f"{where}: {src}: no such run directory")
    try:
        manifest = verify_manifest(src)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    path = src / WEIGHTS
    if WEIGHTS not in manifest["files"]:
        raise CheckpointError(f"{where}: {path}: not listed in {src / MANIFEST} (not a complete cellnet run)")
    theirs = load_tensors(path)
    ours = pipeline.state_tensors()

    def shape(t: Any) -> str:
        return "[" + ", ".join(str(d) for d in t.shape) + "]"

    for name, t in ours.items():
        if name in theirs and tuple(theirs[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{where}: {path}: tensor '{name}' has shape {shape(theirs[name])} there but "
                                  f"{shape(t)} in this config (reshaper and core must match the source run's)")
    missing = [k for k in ours if k not in theirs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: {path}: has no tensor '{missing[0]}'{more}, which this config's "
                              f"{missing[0].split('.')[0]} needs (reshaper and core must match the source run's)")
    extra = [k for k in theirs if k not in ours]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{where}: {path}: holds tensor '{extra[0]}'{more}, which this config has no "
                              f"place for (reshaper and core must match the source run's)")
    pipeline.load_state_tensors(theirs, str(path))
    _warn_other_encoder(pipeline, src, run)
    return len(theirs)


def _warn_other_encoder(pipeline: Any, src: Path, run: Any) -> None:
    """The weights fit one embedding space: say so when the source run used another encoder."""
    import yaml

    from cellnet_core.config import config_to_dict

    try:
        theirs = (yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8")) or {}).get("encoder")
        ours = config_to_dict(pipeline.config).get("encoder")
    except Exception:  # a warning only: the weights themselves were verified
        return
    if theirs is not None and ours is not None and theirs != ours:
        say(run, f"warning: training.init_from: {src} was trained with encoder {theirs}, this run uses {ours}; "
                 "its weights expect the other encoder's embeddings")


def _decoder_name(pipeline: Any) -> str:
    return str(getattr(getattr(getattr(pipeline, "config", None), "decoder", None), "name", "decoder"))


def fit_decoder_on(pipeline: Any, texts: Sequence[str], embs: torch.Tensor | None = None, run: Any = None) -> Any:
    """Fit the pipeline's decoder (if it has ``fit``) on ``texts`` and their embeddings (the
    pipeline's encoder unless ``embs`` is given); says what it does on stderr. Returns what
    ``fit`` returns."""
    dec = pipeline.decoder
    if not callable(getattr(dec, "fit", None)) or not texts:
        return None
    texts = list(texts)
    name = _decoder_name(pipeline)
    say(run, f"fitting decoder '{name}' on {len(texts)} sentences…")
    t0 = time.perf_counter()
    out = dec.fit(texts, pipeline.encode(texts) if embs is None else embs)
    say(run, f"decoder '{name}' fitted in {time.perf_counter() - t0:.1f} s")
    return out


class _GradientStrategy:
    label = "train"

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def engine(self, trainset: TrainSet) -> Engine:
        return Engine(self.cfg, label=self.label)

    def fit(self, pipeline: Any, data: Any, run: Any) -> TrainResult:
        from cellnet_core.run import STATE_FILE

        resuming = bool(run.resume) and (Path(run.run_dir) / STATE_FILE).exists()
        if self.cfg.init_from and not resuming:  # on resume the checkpoint holds the weights
            n = load_init_weights(pipeline, self.cfg.init_from, run)
            say(run, f"{self.label}: warm start from {self.cfg.init_from} ({n} tensors)")
        trainset, valset, answers = self.prepare(pipeline, data, run)
        engine = self.engine(trainset)
        engine.aux = self.mix_objectives(pipeline, data, run)
        result = engine.fit(PipelineModel(pipeline), trainset, valset, run)
        if self.cfg.fit_decoder:
            t0 = time.perf_counter()
            self.fit_decoder(pipeline, answers, run)
            result.metrics["decoder_seconds"] = time.perf_counter() - t0
        result.metrics["train_pairs"] = float(trainset.q.shape[0])
        pipeline.eval()
        return result

    def prepare(self, pipeline: Any, data: Any, run: Any) -> tuple[TrainSet, ValSet | None, list[str]]:
        return pair_sets(pipeline, data, self.cfg)

    def fit_decoder(self, pipeline: Any, answers: list[str], run: Any = None) -> None:
        fit_decoder_on(pipeline, answers, run=run)

    def mix_objectives(self, pipeline: Any, data: Any, run: Any) -> list[AuxObjective]:
        """The objectives ``mix`` adds beside this strategy's own, each with its weight:

        - ``autoencoder``: each training sentence (:func:`sentence_texts` of ``train``) → itself,
          cosine loss; needs the output size to equal the input size;
        - ``dialogue``: each training question → its answer (the pipeline's encoder), infonce
          with the run's ``temperature`` over the chunk's answers."""
        out: list[AuxObjective] = []
        for name, weight in (getattr(self.cfg, "mix", None) or {}).items():
            if name == "autoencoder":
                texts = list(dict.fromkeys(sentence_texts(data, "train")))
                if not texts:
                    raise DataError("training.mix.autoencoder: the dataset has no training texts")
                emb = pipeline.encode(texts).float()
                out_dim = int(getattr(pipeline.reshaper, "out_dim", emb.shape[1]))
                if out_dim != emb.shape[1]:
                    raise ConfigError(f"training.mix.autoencoder: reconstruction needs the output size to equal "
                                      f"the input size ({emb.shape[1]}); reshaper.out_dim is {out_dim}")
                out.append(AuxObjective(name, float(weight), TrainSet(emb, torch.arange(len(texts)), emb),
                                        CombinedLoss("cosine")))
            elif name == "dialogue":
                ts, _ = pair_trainset(pipeline, data, self.cfg, with_negatives=False, what="mix.dialogue")
                out.append(AuxObjective(name, float(weight), ts,
                                        CombinedLoss("infonce", self.cfg.temperature, self.cfg.margin)))
            else:  # the config admits only the names above
                raise ConfigError(f"training.mix: unknown objective '{name}' (available: autoencoder, dialogue)")
        return out


class DialogueStrategy(_GradientStrategy):
    """Question embedding → answer embedding."""

    label = "dialogue"


class CurriculumStrategy(DialogueStrategy):
    """Dialogue with pairs ordered easy → hard by the baseline cosine between question and answer
    embedding (high cosine = easy) and a competence schedule c(epoch) ∈ (0, 1]: epoch e trains on
    the easiest ⌈c(e)·N⌉ pairs, shuffled by (seed, epoch)."""

    label = "curriculum"

    def competence(self, epoch: int) -> float:
        """c(epoch) ∈ (0, 1]: the fraction of (easiest) pairs trained in ``epoch`` (1-based)."""
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
        """An engine whose epochs train the easiest ⌈c(e)·N⌉ rows of ``trainset``."""
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
        return sentence_texts(data, split, self.cfg.source)

    def prepare(self, pipeline: Any, data: Any, run: Any):
        """Each unique sentence's embedding as input and as its own target (train and val)."""
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
        """The ensemble target: ``embed(texts) -> [B, D]`` over the configured teachers."""
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
        """Pair tensors whose answer targets are the teachers' ensemble embeddings."""
        self._embed = self.teachers(pipeline, run)
        return pair_sets(pipeline, data, self.cfg, embed_target=self._embed)

    def fit_decoder(self, pipeline: Any, answers: list[str], run: Any = None) -> None:
        """Fit the decoder on the training answers and their ensemble targets."""
        fit_decoder_on(pipeline, answers, self._embed(answers) if self._embed is not None else None, run=run)


class DecoderStrategy:
    """Fit the pipeline's decoder on texts and their teacher embeddings."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def fit(self, pipeline: Any, data: Any, run: Any) -> TrainResult:
        """Fit the decoder on the configured texts; one ``metrics.jsonl`` row."""
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
        out = fit_decoder_on(pipeline, texts, run=run)
        metrics = {"texts": float(len(texts))}
        if isinstance(out, dict):
            metrics.update({k: float(v) for k, v in out.items() if isinstance(v, (int, float))})
        row = {"epoch": 1, **metrics}
        run.log_metrics(row)
        return TrainResult(epochs=1, best_epoch=None, metrics=metrics, seconds=time.perf_counter() - t0,
                           history=[row])


def build_autoencoder(cfg, ctx=None) -> AutoencoderStrategy:
    """Factory of the ``autoencoder`` strategy."""
    return AutoencoderStrategy(cfg)


def build_dialogue(cfg, ctx=None) -> DialogueStrategy:
    """Factory of the ``dialogue`` strategy."""
    return DialogueStrategy(cfg)


def build_curriculum(cfg, ctx=None) -> CurriculumStrategy:
    """Factory of the ``curriculum`` strategy."""
    return CurriculumStrategy(cfg)


def build_distill(cfg, ctx=None) -> DistillStrategy:
    """Factory of the ``distill`` strategy."""
    return DistillStrategy(cfg)


def build_decoder(cfg, ctx=None) -> DecoderStrategy:
    """Factory of the ``decoder`` strategy."""
    return DecoderStrategy(cfg)
