"""The core's encoder contract, for every teacher here."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from cellnet_core.testing.contracts import EncoderContract


class TestMiniLMContract(EncoderContract):
    name = "minilm"


class TestHFContract(EncoderContract):
    name = "hf"

    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        from cellnet_teachers.hf import minilm_path

        return {"model": str(minilm_path()), "pooling": "cls", "max_length": 64}


class TestEnsembleContract(EncoderContract):
    name = "ensemble"
    config: ClassVar[dict[str, Any]] = {"encoders": [{"name": "minilm"}, {"name": "hashing", "dim": 32}],
                                        "combine": "mean"}


@pytest.mark.slow
@pytest.mark.usefixtures("use_smollm2_home")
class TestSmolLM2Contract(EncoderContract):
    name = "smollm2"
    config: ClassVar[dict[str, Any]] = {"pooling": "last", "max_length": 64}
