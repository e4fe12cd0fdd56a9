"""Config errors are one line each with file and dotted path; every file under configs/ validates."""

from pathlib import Path

import pytest

from cellnet_core.config import apply_overrides, json_schema, load_config
from cellnet_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "unknown name": ("data: {name: greetings}\nencoder: {name: hashin}\n",
                     "encoder: unknown 'hashin'; available: .*hashing.*; did you mean 'hashing'\\?"),
    "misspelt field": ("data: {name: greetings}\nencoder: {name: hashing, dimm: 3}\n",
                       r"encoder\.dimm: unknown field"),
    "out of range": ("data: {name: greetings}\nencoder: {name: hashing, dim: 2}\n",
                     r"encoder\.dim: Input should be greater than or equal to 8 \(got 2\)"),
    "wrong type": ("data: {name: greetings}\nencoder: {name: hashing, dim: abc}\n",
                   r"encoder\.dim: Input should be a valid integer"),
    "missing section": ("encoder: {name: hashing}\n", r"data: required section missing"),
    "unreadable yaml": ("data: {name: greetings\nencoder: [\n", r"line 2: unreadable YAML"),
    "unknown section": ("data: {name: greetings}\nencoder: {name: hashing}\ntrainig: {name: x}\n",
                        r"trainig: unknown section; did you mean 'training'\?"),
    "top-level type": ("data: {name: greetings}\nencoder: {name: hashing}\nseed: -3\n",
                       r"seed: Input should be greater than or equal to 0"),
    "missing name": ("data: {name: greetings}\nencoder: {dim: 3}\n", r"encoder\.name: required field missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configs_one_line_with_path(case, tmp_path, registry):
    text, pattern = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(registry, path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    import re

    assert re.search(pattern, msg), msg


def test_overrides(tmp_path, registry):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: greetings}\nencoder: {name: hashing}\n")
    cfg = load_config(registry, path, ["encoder.dim=64", "seed=7", "reshaper.channels=2"])
    assert cfg.encoder.dim == 64 and cfg.seed == 7 and cfg.reshaper.channels == 2
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["nonsense"])


def test_config_is_frozen(tmp_path, registry):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: greetings}\nencoder: {name: hashing}\n")
    cfg = load_config(registry, path)
    with pytest.raises(Exception):
        cfg.encoder.dim = 3


def test_schema_has_every_section(registry):
    schema = json_schema(registry)
    for section in ("data", "encoder", "reshaper", "core", "decoder", "training"):
        assert section in schema["properties"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path, registry):
    load_config(registry, path)
