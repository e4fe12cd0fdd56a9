"""Configs of the built-in parts (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cellnet_core.config import ComponentConfig


class HashingEncoderConfig(ComponentConfig):
    """Feature hashing of word n-grams, L2-normalised. No weights: a fast test encoder and a
    lexical baseline."""

    name: Literal["hashing"] = "hashing"
    dim: int = Field(384, ge=8, le=65536, description="embedding size D (number of hash buckets)")
    ngrams: int = Field(2, ge=1, le=4, description="word n-grams up to this length")
    char_ngrams: int = Field(0, ge=0, le=5, description="also hash character n-grams of this length (0: off)")
    lowercase: bool = Field(True, description="lowercase before hashing")

    def embedding_dim(self) -> int | None:
        """D is the number of hash buckets."""
        return self.dim


class FlatReshaperConfig(ComponentConfig):
    """Exact reshape of D into X·Y·Z·C and back (no parameters)."""

    name: Literal["flat"] = "flat"
    shape: tuple[int, int, int] | None = Field(
        None, description="lattice (X, Y, Z); default: (D // C, 1, 1)")
    channels: int = Field(1, ge=1, le=4096, description="channels C per cell")

    def check_run(self, run, registry) -> None:
        """X·Y·Z·C must equal the encoder's D (or C divide D), when the encoder config knows D."""
        from cellnet_core.errors import ConfigError

        embedding_dim = getattr(run.encoder, "embedding_dim", None)
        dim = embedding_dim() if callable(embedding_dim) else None
        if dim is None:
            return
        if self.shape is None:
            if dim % self.channels:
                raise ConfigError(f"reshaper.channels: {self.channels} does not divide the embedding size {dim} "
                                  f"of encoder '{run.encoder.name}'")
            return
        x, y, z = self.shape
        if x * y * z * self.channels != dim:
            raise ConfigError(f"reshaper: shape {list(self.shape)} × channels {self.channels} = "
                              f"{x * y * z * self.channels}, but encoder '{run.encoder.name}' gives {dim} dims; "
                              "they must be equal for 'flat'")


class IdentityCoreConfig(ComponentConfig):
    """The baseline core: the question's embedding is the answer's."""

    name: Literal["identity"] = "identity"


class NearestDecoderConfig(ComponentConfig):
    """Exact cosine search over the texts the decoder was fit on."""

    name: Literal["nearest"] = "nearest"
    k: int = Field(5, ge=1, le=1000, description="candidates reported per query")


class RetrievalStrategyConfig(ComponentConfig):
    """Fits the decoder on the training answers; trains nothing else (the retrieval baseline)."""

    name: Literal["retrieval"] = "retrieval"
    include_val: bool = Field(False, description="also put validation answers in the decoder's bank")
