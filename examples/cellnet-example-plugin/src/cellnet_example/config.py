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
