"""Configs: pydantic models, no torch import (listing and validating stay cheap)."""

from typing import Literal

from pydantic import Field

from cellnet_core.config import ComponentConfig


class GreetingsConfig(ComponentConfig):
    """24 hand-written greeting pairs, split 16/4/4 by a seeded shuffle."""

    name: Literal["greetings"] = "greetings"
    seed: int = Field(0, ge=0, description="seed of the train/val/test split")


class CharNgramConfig(ComponentConfig):
    """Hashed character n-grams, L2-normalised."""

    name: Literal["char-ngram"] = "char-ngram"
    dim: int = Field(256, ge=8, le=65536, description="embedding size")
    n: int = Field(3, ge=1, le=6, description="character n-gram length")


class ResidualTanhCellConfig(ComponentConfig):
    """Lattice cell: tanh MLP over (neighbour mean, own state, input), zero update at init."""

    name: Literal["residual-tanh"] = "residual-tanh"
    hidden: int = Field(16, ge=1, le=4096, description="hidden units H")
    scale: float = Field(1.0, gt=0.0, le=100.0, description="largest update of a channel in one step")


class CosineMarginLossConfig(ComponentConfig):
    """CosFace-style large-margin softmax over the batch's candidate answers."""

    name: Literal["cosine-margin"] = "cosine-margin"
    scale: float = Field(20.0, gt=0.0, le=1000.0, description="logit scale s (an inverse temperature)")
    margin: float = Field(0.2, ge=0.0, le=1.0, description="cosine margin m the true answer must win by")
