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
    """A built run: every part plus the config that made it."""

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

    def think(self, emb):
        """``[B, D]`` → ``[B, D']`` through reshaper → core → reshaper."""
        emb = emb.to(self.device)
        state = self.core(self.reshaper.to_field(emb))
        return self.reshaper.from_state(state)

    def decode(self, emb) -> list[str]:
        return self.decoder.decode(emb.detach().to("cpu"))

    def trainable_modules(self) -> dict[str, Any]:
        return {n: m for n, m in (("reshaper", self.reshaper), ("core", self.core)) if _is_module(m)}

    def parameters(self):
        for m in self.trainable_modules().values():
            yield from m.parameters()

    def train(self, mode: bool = True) -> "Pipeline":
        for m in self.trainable_modules().values():
            m.train(mode)
        return self

    def eval(self) -> "Pipeline":
        return self.train(False)

    def answer(self, texts: Sequence[str], k: int = 5) -> list[Answer]:
        """Question texts → answers with score, top-k candidates and the lattice steps used."""
        import torch

        texts = list(texts)
        if not texts:
            return []
        self.eval()
        with torch.no_grad():
            out = self.think(self.encode(texts)).detach().cpu()
        decoded = self.decoder.decode(out)
        cands: list[list[Any]] = [[] for _ in texts]
        if hasattr(self.decoder, "candidates"):
            cands = self.decoder.candidates(out, k)
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

    def state_tensors(self) -> dict[str, Any]:
        out = {}
        for name, module in self.trainable_modules().items():
            for k, v in module.state_dict().items():
                out[f"{name}.{k}"] = v
        return out

    def load_state_tensors(self, tensors: dict[str, Any], source: str = WEIGHTS) -> None:
        for name, module in self.trainable_modules().items():
            sub = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise CheckpointError(f"{source}: does not match the config's {name} ({first})") from None

    # -- saving ---------------------------------------------------------------------------
    def save(self, run_dir: str | Path, extra_files: Sequence[str | Path] = (), manifest_extra: dict | None = None) -> None:
        """Write config, weights, encoder/decoder artefacts and the manifest into ``run_dir``."""
        from cellnet_core.config import config_to_dict

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
        return pipe


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
