"""The pipeline: encoder → reshaper → core → reshaper → decoder, built from a run config.

``encode`` always goes through the on-disk embedding cache. ``think`` is
``reshaper.from_state(core(reshaper.to_field(emb)))``. A run directory holds ``config.yaml``,
``weights.safetensors`` (reshaper and core parameters), ``encoder/`` and ``decoder/`` artefacts
and ``manifest.json`` with the hash of every file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from cellnet_core.checkpoint import (
    WEIGHTS,
    atomic_write_text,
    load_tensors,
    save_tensors,
    verify_manifest,
    write_manifest,
)
from cellnet_core.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.yaml"


def resolve_device(name: str = "auto"):
    """A ``torch.device`` for a config's ``device``: ``auto`` is CUDA when available, else the CPU;
    asking for CUDA where there is none raises :class:`ConfigError`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for but CUDA is not available on this machine")
    return torch.device(name)


@dataclass
class BuildContext:
    """What a factory gets besides its own config.

    Filled step by step as the pipeline builds: ``encoder`` and ``embedding_dim`` before the
    reshaper, ``reshaper`` before the core, everything before the decoder.
    """

    registry: Any
    device: Any = None
    seed: int = 0
    config: Any = None
    encoder: Any = None
    embedding_dim: int | None = None
    reshaper: Any = None
    core: Any = None
    run_dir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    """One answer of :meth:`Pipeline.answer`.

    ``text``: the decoded answer ("" when the decoder has no confident one); ``score``: the
    decoder's score of that text (cosine similarity to the lattice's output embedding for the
    built-in and phrase-bank decoders); ``candidates``: up to ``k`` ``{"text", "score"}`` rows, best
    first; ``steps``: the lattice steps run (None for a core without steps).
    """

    question: str
    text: str
    score: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    steps: int | None = None


def _is_module(obj: Any) -> bool:
    try:
        import torch

        return isinstance(obj, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


class Pipeline:
    """A built run: every part plus the config that made it.

    Build one from a config with :meth:`build` (untrained) or :func:`cellnet_core.api.train`, load
    a saved one with :meth:`load` / :func:`cellnet_core.api.load_run`. ``run_dir`` is the run
    directory it was loaded from or trained into (None for a pipeline only built);
    ``train_info`` the manifest's ``train`` entry after :func:`~cellnet_core.api.train`.
    """

    run_dir: Path | None = None
    train_info: dict[str, Any] | None = None

    def __init__(self, config: Any, registry: Any, encoder: Any, reshaper: Any, core: Any, decoder: Any,
                 device: Any, cache_dir: str | Path | None = None):
        self.config = config
        self.registry = registry
        self.encoder = encoder
        self.reshaper = reshaper
        self.core = core
        self.decoder = decoder
        self.device = device
        self.cache_dir = cache_dir

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, config: Any, registry: Any, *, cache_dir: str | Path | None = None,
              use_cache: bool = True) -> "Pipeline":
        """Build every part of ``config`` (a validated run config) with the registry's factories,
        untrained; ``encode`` goes through the embedding cache in ``cache_dir`` (default
        :func:`cellnet_core.cache.default_cache_dir`) unless ``use_cache`` is false."""
        import torch

        from cellnet_core.cache import CachedEncoder

        torch.manual_seed(config.seed)
        device = resolve_device(config.device)
        ctx = BuildContext(registry=registry, device=device, seed=config.seed, config=config)
        raw_encoder = registry.build("encoder", config.encoder, ctx)
        encoder = CachedEncoder(raw_encoder, cache_dir, enabled=use_cache)
        ctx.encoder, ctx.embedding_dim = encoder, encoder.dim
        reshaper = registry.build("reshaper", config.reshaper, ctx)
        ctx.reshaper = reshaper
        core = registry.build("core", config.core, ctx)
        ctx.core = core
        ctx.embedding_dim = getattr(reshaper, "out_dim", encoder.dim)
        decoder = registry.build("decoder", config.decoder, ctx)
        for part in (reshaper, core):
            if _is_module(part):
                part.to(device)
        return cls(config, registry, encoder, reshaper, core, decoder, device, cache_dir)

    # -- the chain ------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]):
        """``texts`` → ``[B, D]`` teacher embeddings (cached on disk)."""
        return self.encoder.encode(list(texts))

    def encode_tokens(self, texts: Sequence[str]):
        """``texts`` → per text ``(ids [L], states [L, D])`` token states of the teacher (cached on
        disk); :class:`~cellnet_core.errors.ConfigError` when the encoder gives none."""
        if getattr(self, "_tokens", None) is None:
            from cellnet_core.token_cache import TokenCache

            self._tokens = TokenCache(self.encoder, self.cache_dir,
                                      enabled=getattr(self.encoder, "enabled", True))
        return self._tokens.get(list(texts))

    @property
    def scores_pairs(self) -> bool:
        """True when the reshaper places a (question, candidate) pair on the lattice and reads a
        relevance score (``pair_inputs`` / ``pair_field`` / ``pair_score``)."""
        return callable(getattr(self.reshaper, "pair_field", None))

    def think(self, emb):
        """``[B, D]`` → ``[B, D']`` through reshaper → core → reshaper.

        A pair-scoring pipeline (:attr:`scores_pairs`) returns the question's own embedding: it
        retrieves candidates by it and ranks them with :meth:`score_pairs`."""
        emb = emb.to(self.device)
        if self.scores_pairs:
            return emb
        state = self.core(self.reshaper.to_field(emb))
        return self.reshaper.from_state(state)

    def score_pairs(self, questions: Sequence[str], candidates: Sequence[str], batch: int = 512):
        """Relevance ``[N]`` of each ``(questions[i], candidates[i])`` pair, higher is better.

        A pair-scoring reshaper writes both texts onto the lattice, the core runs, the reshaper
        reads the score. Any other pipeline scores by the cosine between ``think(question)`` and
        the candidate's embedding. Gradients flow when called under ``torch.enable_grad`` in
        training mode (the listwise strategy does); ``batch`` bounds the pairs per core call."""
        import torch

        questions, candidates = list(questions), list(candidates)
        if len(questions) != len(candidates):
            raise ValueError(f"score_pairs: {len(questions)} questions for {len(candidates)} candidates")
        if not questions:
            return torch.zeros(0)
        if not self.scores_pairs:
            out = self.think(self.encode(questions))
            cand = self.encode(candidates).to(out.device)
            return torch.nn.functional.cosine_similarity(out.float(), cand.float(), dim=-1)
        parts = []
        for i in range(0, len(questions), batch):
            inputs = self.reshaper.pair_inputs(self, questions[i:i + batch], candidates[i:i + batch])
            state = self.core(self.reshaper.pair_field(inputs))
            parts.append(self.reshaper.pair_score(state, inputs))
        return torch.cat(parts)

    def decode(self, emb) -> list[str]:
        """``[B, D']`` embeddings → ``B`` texts through the decoder."""
        return self.decoder.decode(emb.detach().to("cpu"))

    def trainable_modules(self) -> dict[str, Any]:
        """The parts that are ``nn.Module``s (reshaper, core), by name."""
        return {n: m for n, m in (("reshaper", self.reshaper), ("core", self.core)) if _is_module(m)}

    def parameters(self):
        """Every parameter of the trainable parts (for an optimizer)."""
        for m in self.trainable_modules().values():
            yield from m.parameters()

    def train(self, mode: bool = True) -> "Pipeline":
        """Put the trainable parts in training mode (``mode=False``: evaluation mode)."""
        for m in self.trainable_modules().values():
            m.train(mode)
        return self

    def eval(self) -> "Pipeline":
        """Evaluation mode (no stochastic firing, early stop by ``tol`` where the core has it)."""
        return self.train(False)

    def context_input(self, texts: Sequence[str], context: Any = None):
        """The :meth:`think` input of ``texts`` with the conversation's previous turns.

        ``context``: the turns before the texts, oldest first — one list for every text, or one list
        per text (``[[...], [...]]``). A reshaper that takes several turns (``context_slots`` = k,
        e.g. ``context-planes``) gets ``[B, k·D]``: the last k turns ending at the text, zero
        embeddings in front when there are fewer (as the ``context`` strategy trains it). Without
        ``context``: the texts' own embeddings ``[B, D]``. ``context`` with a reshaper that takes one
        turn is a :class:`~cellnet_core.errors.ConfigError`."""
        texts = list(texts)
        if context is None:
            return self.encode(texts)
        slots = getattr(self.reshaper, "context_slots", None)
        if not slots:
            from cellnet_core.errors import ConfigError

            name = getattr(getattr(self.config, "reshaper", None), "name", type(self.reshaper).__name__)
            raise ConfigError(f"context: reshaper '{name}' takes one turn; previous turns need a run whose "
                              f"reshaper takes several (context-planes)")
        context = list(context)
        if all(isinstance(c, str) for c in context):
            histories = [context] * len(texts)
        else:
            histories = [list(c) for c in context]
            if len(histories) != len(texts):
                raise ValueError(f"context: {len(histories)} histories for {len(texts)} texts; give one list of "
                                 f"previous turns per text, or one list for all")
        turns = [(list(h) + [t])[-slots:] for h, t in zip(histories, texts)]
        unique = list(dict.fromkeys(x for ts in turns for x in ts))
        emb = self.encode(unique).float()
        row = {x: i for i, x in enumerate(unique)}
        packed = emb.new_zeros(len(texts), slots, emb.shape[1])
        for i, ts in enumerate(turns):
            for j, x in enumerate(ts):
                packed[i, slots - len(ts) + j] = emb[row[x]]
        return packed.reshape(len(texts), -1)

    def answer(self, texts: Sequence[str], k: int = 5, context: Any = None) -> list[Answer]:
        """Question texts → answers with score, top-k candidates and the lattice steps used.

        ``context``: the conversation's previous turns, oldest first (one list for all texts or one
        per text; see :meth:`context_input`), for runs whose reshaper takes several turns."""
        import torch

        texts = list(texts)
        if not texts:
            return []
        self.eval()
        with torch.no_grad():
            out = self.think(self.context_input(texts, context)).detach().cpu()
        decoded = self.decoder.decode(out)
        cands: list[list[Any]] = [[] for _ in texts]
        if hasattr(self.decoder, "candidates"):
            cands = self.decoder.candidates(out, k)
        if self.scores_pairs and hasattr(self.decoder, "candidates"):
            decoded, cands = self._rerank(texts, out, k)
        steps = getattr(self.core, "last_steps", None)
        answers = []
        for i, q in enumerate(texts):
            row = [{"text": c.text, "score": float(c.score)} for c in cands[i]]
            score = next((c["score"] for c in row if c["text"] == decoded[i]), None)
            if score is None:
                score = float(torch.nn.functional.cosine_similarity(
                    self.encode([decoded[i]]), out[i:i + 1]).item()) if decoded[i] else 0.0
            answers.append(Answer(q, decoded[i], score, row, steps))
        return answers

    #: how many of the decoder's candidates a pair-scoring pipeline reranks
    RERANK_POOL = 20

    def _rerank(self, texts: list[str], out, k: int) -> tuple[list[str], list[list[Any]]]:
        """Bank top-``RERANK_POOL`` by the question's embedding, reordered by :meth:`score_pairs`."""
        import torch

        from cellnet_core.interfaces import Candidate

        pool = self.decoder.candidates(out, max(k, self.RERANK_POOL))
        flat_q = [q for q, row in zip(texts, pool) for _ in row]
        flat_c = [c.text for row in pool for c in row]
        with torch.no_grad():
            scores = self.score_pairs(flat_q, flat_c).detach().cpu().tolist() if flat_c else []
        decoded, ranked, at = [], [], 0
        for row in pool:
            s = scores[at:at + len(row)]
            at += len(row)
            order = sorted(range(len(row)), key=lambda j: -s[j])
            ranked.append([Candidate(row[j].text, float(s[j])) for j in order][:k])
            decoded.append(row[order[0]].text if row else "")
        return decoded, ranked

    def state_tensors(self) -> dict[str, Any]:
        """Every trainable part's ``state_dict`` in one flat mapping, keys prefixed ``reshaper.`` / ``core.``."""
        out = {}
        for name, module in self.trainable_modules().items():
            for k, v in module.state_dict().items():
                out[f"{name}.{k}"] = v
        return out

    def load_state_tensors(self, tensors: dict[str, Any], source: str = WEIGHTS) -> None:
        """Load what :meth:`state_tensors` gave (strict); a mismatch raises :class:`CheckpointError`."""
        for name, module in self.trainable_modules().items():
            sub = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise CheckpointError(f"{source}: does not match the config's {name} ({first})") from None

    # -- saving ---------------------------------------------------------------------------
    def save(self, run_dir: str | Path, extra_files: Sequence[str | Path] = (), manifest_extra: dict | None = None) -> None:
        """Write config, weights, encoder/decoder artefacts and the manifest into ``run_dir``.

        A symbolic link in ``run_dir`` (a ``decoder/`` pointing elsewhere) is refused with
        :class:`CheckpointError` before anything is written: saves never leave the run directory."""
        from cellnet_core.checkpoint import refuse_links
        from cellnet_core.config import config_to_dict

        refuse_links(run_dir)
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
        save_tensors(run_dir / WEIGHTS, self.state_tensors(), metadata={"format": "cellnet-pipeline"})
        files: list[Path] = [run_dir / CONFIG_FILE, run_dir / WEIGHTS]
        for part_name, part in (("encoder", self.encoder.inner), ("decoder", self.decoder)):
            if hasattr(part, "save"):
                written = part.save(run_dir / part_name) or []
                files.extend(Path(p) for p in written)
        files.extend(Path(p).resolve() for p in extra_files)  # relative to the working directory
        info = {"device": str(self.device)}
        for attr in ("kernel_name", "kernel_choice"):
            if hasattr(self.core, attr):
                info["kernel"] = getattr(self.core, attr)
        write_manifest(run_dir, files, extra={"run": info, **(manifest_extra or {})})

    @classmethod
    def load(cls, run_dir: str | Path, registry: Any, *, device: str | None = None,
             cache_dir: str | Path | None = None) -> "Pipeline":
        """Rebuild a saved run; a missing or damaged file raises :class:`CheckpointError` naming it."""
        from cellnet_core.config import read_yaml, validate_run_config

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: no such run directory")
        verify_manifest(run_dir)
        data = read_yaml(run_dir / CONFIG_FILE)
        if device is not None:
            data["device"] = device
        config = validate_run_config(registry, data, source=str(run_dir / CONFIG_FILE))
        pipe = cls.build(config, registry, cache_dir=cache_dir)
        pipe.load_state_tensors(load_tensors(run_dir / WEIGHTS), str(run_dir / WEIGHTS))
        for part_name, part in (("encoder", pipe.encoder.inner), ("decoder", pipe.decoder)):
            if hasattr(part, "load") and (run_dir / part_name).exists():
                part.load(run_dir / part_name)
        pipe.eval()
        pipe.run_dir = run_dir
        return pipe


def read_json(path: Path) -> Any:
    """A JSON file's content (no checks; see :func:`cellnet_core.checkpoint.read_json` for those)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
