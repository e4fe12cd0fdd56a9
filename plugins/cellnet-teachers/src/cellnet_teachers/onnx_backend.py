"""The ONNX Runtime backend of the ``minilm`` and ``hf`` teachers.

The transformer is exported once from the same local weights the torch backend loads
(``torch.onnx.export``, TorchScript exporter, dynamic batch and sequence axes) and its output is the
hidden state of the configured ``layer``; pooling, normalisation and batching stay in
:mod:`cellnet_teachers.hf`, shared with the torch path. BERT-like models (``model_type`` bert,
roberta, …) are then fused by ONNX Runtime's transformer optimiser (Attention, EmbedLayerNormalization,
SkipLayerNormalization, BiasGelu); other models keep the plain graph, which the session optimises at
``ORT_ENABLE_ALL``. ``quantize: int8`` quantises the fused fp32 graph dynamically (int8 weights per
output channel, activations quantised per batch at run time).

Exports live under ``<cellnet home>/onnx/<model>-<key>/`` (``$CELLNET_HOME/onnx`` or
``~/.cache/cellnet/onnx``): ``model.onnx`` and ``export.json``. The key hashes the weights' digest,
the layer, the quantisation, the opset, this module's export version and the onnxruntime / onnx /
torch versions, so a change of any of them is a new folder. ``export.json`` records the settings and
the sha256 of ``model.onnx``; a folder whose record does not match, or whose file does not hash to
the recorded value or fails to load, is reported with a warning and rebuilt. Folders are written into
a temporary sibling and renamed into place, so an interrupted export never leaves a half-written model.
Nothing is downloaded: the export reads the folder the torch backend would load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cellnet_core.errors import ConfigError, MissingDependencyError

#: bump when the export (graph, fusion, quantisation recipe) changes: old exports are then rebuilt
EXPORT_VERSION = 1
OPSET = 17
MODEL_FILE = "model.onnx"
RECORD_FILE = "export.json"
#: model types whose graph ONNX Runtime's transformer optimiser fuses (its 'bert' patterns)
FUSABLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "distilbert")
#: activation ops after which the next MatMul is an FFN down projection (kept float in int8)
_ACTIVATIONS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Erf", "Tanh", "Sigmoid", "Relu"}
_ELEMENTWISE = {"Mul", "Add", "Div", "Sub", "Cast"}
#: texts of the parity check run after every export (padding, several lengths, an empty string)
_CHECK_TEXTS = ["Hello there!", "What is the capital of France, and how far is it from the sea?", "",
                "I have two cats and a dog.", "ok"]
#: least cosine per text between the export and the torch model on the check texts (fp32)
CHECK_MIN_COS = 0.99999

# sessions are shared inside one process: key (model.onnx path, threads)
_SESSIONS: dict[tuple[str, int], Any] = {}


def require_onnxruntime(what: str = "encoder backend 'onnx'") -> Any:
    """The ``onnxruntime`` module; a MissingDependencyError with the install command when it is
    missing."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            f"{what} needs onnxruntime, which is not installed; install it with: pip install onnxruntime") from None
    return onnxruntime


def require_onnx(what: str = "encoder backend 'onnx'") -> Any:
    """The ``onnx`` module (needed to export); a MissingDependencyError with the install command
    when it is missing."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            f"{what} needs onnx to export the model, which is not installed; install it with: pip install onnx") from None
    return onnx


def onnx_home() -> Path:
    """``<cellnet home>/onnx``: where exported teachers are kept (see ``cellnet_core.cache.cellnet_home``)."""
    from cellnet_core.cache import cellnet_home

    return cellnet_home() / "onnx"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def export_settings(weights: str, layer: int, quantize: str, model_type: str) -> dict[str, Any]:
    """Everything an export depends on; its hash names the folder."""
    ort = require_onnxruntime()
    onnx = require_onnx()
    return {"weights": weights, "layer": layer, "quantize": quantize, "model_type": model_type,
            "fuse": model_type in FUSABLE, "opset": OPSET, "export_version": EXPORT_VERSION,
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__.split("+")[0]}


def export_folder(name: str, settings: dict[str, Any]) -> Path:
    """Where the export of ``name`` with these ``settings`` lives: ``<onnx
    home>/<name>-<quantize>-<hash of the settings>``."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return onnx_home() / f"{stem}-{settings['quantize']}-{key}"


def check_export(folder: Path, settings: dict[str, Any]) -> str | None:
    """``None`` when ``folder`` holds a complete export made with ``settings``, else what is wrong."""
    record_path, model_path = folder / RECORD_FILE, folder / MODEL_FILE
    if not record_path.is_file():
        return f"{RECORD_FILE} is missing"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{RECORD_FILE} is unreadable"
    if not isinstance(record, dict) or record.get("settings") != settings:
        return "it was made with other settings"
    if not model_path.is_file():
        return f"{MODEL_FILE} is missing"
    if model_path.stat().st_size != record.get("size") or file_sha256(model_path) != record.get("sha256"):
        return f"{MODEL_FILE} does not match its recorded sha256"
    return None


class _LayerOutput(torch.nn.Module):
    """``(input_ids [B, T], attention_mask [B, T]) → hidden [B, T, H]`` of one layer, as the torch path reads it."""

    def __init__(self, model: torch.nn.Module, layer: int):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        want_hidden = self.layer != -1
        res = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden)
        return res.last_hidden_state if not want_hidden else res.hidden_states[self.layer]


def _load_export_model(source: str, where: str) -> torch.nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        # eager attention: plain MatMul/Softmax graphs are what the optimiser's fusions recognise
        model = AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.float32,
                                          attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot load '{source}' to export it to ONNX: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model.eval().requires_grad_(False)


def _check_batches(tokenizer: Any, max_length: int) -> list[dict[str, np.ndarray]]:
    ids = tokenizer(_CHECK_TEXTS, truncation=True, max_length=max_length)["input_ids"]
    ids = [row if row else [tokenizer.pad_token_id or 0] for row in ids]
    return [tokenizer.pad({"input_ids": ids}, return_tensors="np"),
            tokenizer.pad({"input_ids": ids[3:4]}, return_tensors="np")]


def _token_cosines(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    a, b = a[mask.astype(bool)].astype(np.float64), b[mask.astype(bool)].astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)).clip(1e-12)


def _parity(path: Path, wrapper: torch.nn.Module, batches: list[dict[str, np.ndarray]]) -> float:
    """Least cosine, over the real tokens of the check batches, between ``path`` and the torch model."""
    session = make_session(path, threads=1)
    worst = 1.0
    for b in batches:
        got = session.run(None, {"input_ids": b["input_ids"].astype(np.int64),
                                 "attention_mask": b["attention_mask"].astype(np.int64)})[0]
        with torch.no_grad():
            ref = wrapper(torch.as_tensor(b["input_ids"], dtype=torch.long),
                          torch.as_tensor(b["attention_mask"], dtype=torch.long)).numpy()
        if not np.isfinite(got).all():
            return float("nan")
        worst = min(worst, float(_token_cosines(got, ref, b["attention_mask"]).min()))
    return worst


def down_projections(model: Any) -> list[str]:
    """Names of the MatMuls fed by an activation (through element-wise ops only): the FFN down
    projections, whose inputs carry the outliers that per-tensor dynamic quantisation handles worst."""
    producers = {out: node for node in model.graph.node for out in node.output}

    def fed_by_activation(name: str, depth: int) -> bool:
        src = producers.get(name)
        if src is None:
            return False
        if src.op_type in _ACTIVATIONS:
            return True
        return src.op_type in _ELEMENTWISE and depth < 4 and any(fed_by_activation(i, depth + 1) for i in src.input)

    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input and fed_by_activation(n.input[0], 0)]


def _export_fp32(model: torch.nn.Module, tokenizer: Any, layer: int, max_length: int, path: Path,
                 fuse: bool, config: Any, where: str) -> dict[str, Any]:
    onnx = require_onnx()
    wrapper = _LayerOutput(model, layer).eval()
    # traced on a padded batch, so the padding mask is part of the graph, not folded away
    trace = tokenizer.pad({"input_ids": tokenizer(["hello there", "a longer sentence to pad the first"],
                                                  truncation=True, max_length=max_length)["input_ids"]},
                          return_tensors="pt")
    plain = path.with_name("plain.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation notes are not the user's concern
        torch.onnx.export(wrapper, (trace["input_ids"].long(), trace["attention_mask"].long()), str(plain),
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"},
                                        "hidden": {0: "batch", 1: "tokens"}},
                          opset_version=OPSET, do_constant_folding=True)
    wrapper.eval()  # the exporter restores the wrapper's mode on exit
    batches = _check_batches(tokenizer, max_length)
    worst = _parity(plain, wrapper, batches)
    if not worst >= CHECK_MIN_COS:
        raise ConfigError(f"{where}.backend: the ONNX export does not reproduce the torch model (least token "
                          f"cosine {worst:.6f} < {CHECK_MIN_COS}); use backend: torch for this model")
    info: dict[str, Any] = {"fused": False, "check_min_cos": worst}
    if fuse:
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            import logging

            logger = logging.getLogger("onnxruntime.transformers")
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                opt = optimize_model(str(plain), model_type="bert",
                                     num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                                     hidden_size=int(getattr(config, "hidden_size", 0) or 0), opt_level=1)
            finally:
                logger.setLevel(level)
            fused_path = path.with_name("fused.onnx")
            opt.save_model_to_file(str(fused_path))
            worst_fused = _parity(fused_path, wrapper, batches)
            if worst_fused >= CHECK_MIN_COS:
                os.replace(fused_path, path)
                info.update(fused=True, check_min_cos=worst_fused,
                            fused_ops={k: v for k, v in opt.get_fused_operator_statistics().items() if v})
            else:  # the fused graph drifted: keep the plain one
                fused_path.unlink(missing_ok=True)
                info["fuse_rejected_min_cos"] = worst_fused
        except Exception as exc:  # an optimiser that does not know the graph leaves it unfused
            info["fuse_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not info["fused"]:
        os.replace(plain, path)
    plain.unlink(missing_ok=True)
    onnx.checker.check_model(str(path))
    return info


def _quantize_int8(fp32: Path, path: Path) -> dict[str, Any]:
    onnx = require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import logging

    excluded = down_projections(onnx.load(str(fp32)))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" is advice for static quantisation
    try:
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=excluded,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    return {"int8": "dynamic, per-channel int8 weights", "float_down_projections": len(excluded)}


def ensure_export(source: str, *, name: str, weights: str, layer: int, quantize: str, tokenizer: Any, config: Any,
                  max_length: int, where: str = "encoder", log=None) -> Path:
    """The ``model.onnx`` of this model, layer and quantisation: reused when its folder checks out,
    exported (and, for int8, quantised from the fp32 export) otherwise."""
    model_type = str(getattr(config, "model_type", "") or "")
    settings = export_settings(weights, layer, quantize, model_type)
    folder = export_folder(name, settings)
    problem = check_export(folder, settings) if folder.exists() else None
    if folder.exists() and problem is None:
        return folder / MODEL_FILE
    if problem is not None:
        warnings.warn(f"ONNX export {folder} is damaged or stale ({problem}); rebuilding it", stacklevel=3)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    fp32 = None
    if quantize == "int8":
        fp32 = ensure_export(source, name=name, weights=weights, layer=layer, quantize="none", tokenizer=tokenizer,
                             config=config, max_length=max_length, where=where, log=log)
    log(f"cellnet: exporting {name} to ONNX ({'int8' if fp32 else 'fp32'}) in {folder} (once)")
    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        target = tmp / MODEL_FILE
        if fp32 is None:
            model = _load_export_model(source, f"{where}.model")
            info = _export_fp32(model, tokenizer, layer, max_length, target, settings["fuse"], config, where)
        else:
            info = _quantize_int8(fp32, target)
            info["from"] = str(fp32)
        record = {"settings": settings, "source": source, "sha256": file_sha256(target),
                  "size": target.stat().st_size, "seconds": round(time.perf_counter() - t0, 1), **info}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for p in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700: let other users of the home read it
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if folder.exists() and check_export(folder, settings) is None:  # another process finished first
            return folder / MODEL_FILE
        raise
    for key in [k for k in _SESSIONS if k[0] == str(folder / MODEL_FILE)]:
        del _SESSIONS[key]  # a session of the file this rebuild replaced
    log(f"cellnet: exported in {time.perf_counter() - t0:.0f} s")
    return folder / MODEL_FILE


def make_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session for ``path``: full graph optimisation, ``threads`` intra-op
    threads, sequential execution."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """``(input_ids [B, T], attention_mask [B, T]) → hidden [B, T, H]`` float32 through ONNX Runtime."""

    def __init__(self, source: str, *, name: str, weights: str, layer: int, quantize: str, threads: int | None,
                 tokenizer: Any, config: Any, max_length: int, where: str = "encoder"):
        require_onnxruntime()
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.path = ensure_export(source, name=name, weights=weights, layer=layer, quantize=quantize, tokenizer=tokenizer,
                                  config=config, max_length=max_length, where=where)
        key = (str(self.path), self.threads)
        if key not in _SESSIONS:
            try:
                _SESSIONS[key] = make_session(self.path, self.threads)
            except Exception as exc:  # a file that hashed right but does not load: rebuild once
                warnings.warn(f"ONNX export {self.path.parent} does not load ({type(exc).__name__}); rebuilding it",
                              stacklevel=2)
                shutil.rmtree(self.path.parent, ignore_errors=True)
                self.path = ensure_export(source, name=name, weights=weights, layer=layer, quantize=quantize,
                                          tokenizer=tokenizer, config=config, max_length=max_length, where=where)
                _SESSIONS[key] = make_session(self.path, self.threads)
        self.session = _SESSIONS[key]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"input_ids": input_ids.to(torch.long).numpy(),
                                      "attention_mask": attention_mask.to(torch.long).numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


__all__: Sequence[str] = ("OnnxRunner", "ensure_export", "onnx_home", "require_onnxruntime", "check_export")
