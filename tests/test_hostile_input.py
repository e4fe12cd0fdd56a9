"""The exit-code contract against hostile input: every user error exits 2 with one readable line on
stderr (naming the file, field or path), never a traceback, and leaves nothing half-written.

Each test is a one-command reproduction through :func:`cellnet_core.cli.main` (or a subprocess
where the process itself matters: argv bytes, stdin, the top-level handler). The rows of
docs/hostile-input.md point here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellnet_core.cli import main
from cellnet_core.errors import ConfigError
from cellnet_core.testing.fakes import GREETINGS_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def _errors(capsys) -> list[str]:
    """The stderr lines of the last command, plugin warnings aside."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]


def one_line(capsys, rc: int, *needles: str) -> str:
    """Assert exit code 2 and exactly one error line holding every needle; return the line."""
    lines = _errors(capsys)
    assert rc == 2, lines
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cellnet ARGS`` in a fresh process (bytes in, bytes out)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cellnet_core.cli", *args], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=300)


def proc_one_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert r.returncode == 2, (r.returncode, lines)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def greet(tmp_path) -> Path:
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    cfg = d / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    assert main(["train", str(cfg), "--run-dir", str(d / "run")]) == 0
    return d / "run"


# -- config files and overrides --------------------------------------------------------------------
def test_set_through_a_scalar(greet, capsys):
    rc = main(["validate", str(greet), "--set", "seed.x=1"])
    one_line(capsys, rc, "seed.x=1", "seed is a number (0)", "not a section")
    rc = main(["validate", str(greet), "--set", "encoder.dim.bits=3"])
    one_line(capsys, rc, "encoder.dim is a number (256)")


def test_set_into_a_section_named_by_a_string_still_works(greet, capsys):
    greet.write_text(GREETINGS_CONFIG.replace("decoder: {name: nearest}", "decoder: nearest"))
    assert main(["validate", str(greet), "--no-data", "--set", "decoder.name=nearest"]) == 0


def test_duplicate_yaml_key_names_key_and_lines(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("seed: 0\ndata: {name: greetings}\nseed: 1\n")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "dup.yaml: line 3: duplicate key 'seed' (first given on line 1)")
    cfg.write_text(GREETINGS_CONFIG.replace("dim: 256", "dim: 256, dim: 128"))
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "duplicate key 'dim'")


def test_yaml_merge_keys_may_override(tmp_path):
    from cellnet_core.config import load_yaml

    assert load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n") == {
        "base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}


def _bomb() -> list[str]:
    """Nine lists of nine aliases of the previous list: 9^9 ≈ 387 million strings once expanded."""
    items, prev = ["&a [x, x, x, x, x, x, x, x, x]"], "a"
    for name in "bcdefghi":
        items.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return items


def test_yaml_alias_bomb_is_bounded(tmp_path, greet, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("".join(f"k{i}: {item}\n" for i, item in enumerate(_bomb())))
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "bomb.yaml: line 7: the document expands to more than 1,000,000 values")
    rc = main(["validate", str(greet), "--set", "eval.baselines=[" + ", ".join(_bomb()) + "]"])
    one_line(capsys, rc, "--set: 'eval.baselines'", "expands to more than")


def test_recursive_yaml_alias(tmp_path, capsys):
    cfg = tmp_path / "rec.yaml"
    cfg.write_text("seed: 0\nloop: &l [*l]\n")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "rec.yaml: line 2", "recursive")


def test_deeply_nested_yaml(tmp_path, capsys):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("seed: " + "[" * 100_000 + "]" * 100_000 + "\n")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "deep.yaml", "nested too deeply")


# -- data files --------------------------------------------------------------------------------------
def _pairs_config(tmp_path: Path, data: str) -> Path:
    cfg = tmp_path / "pairs.yaml"
    cfg.write_text(GREETINGS_CONFIG.replace("data: {name: greetings}", data))
    return cfg


def test_data_path_is_a_directory(tmp_path, run, capsys):
    folder = tmp_path / "my_pairs"
    folder.mkdir()
    rc = main(["eval", str(run), "--data", str(folder)])
    one_line(capsys, rc, "my_pairs: is a directory")
    (tmp_path / "d.jsonl").mkdir()  # a folder named like a data file
    rc = main(["eval", str(run), "--data", str(tmp_path / "d.jsonl")])
    one_line(capsys, rc, "d.jsonl: is a directory")
    cfg = _pairs_config(tmp_path, f"data: {{name: pairs, path: '{folder}'}}")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "my_pairs: is a directory, expected a file")


def _deep_json(path: Path) -> Path:
    depth = 100_000
    path.write_text('{"question": ' + "[" * depth + "]" * depth + ', "answer": "hello"}\n')
    return path


def test_deeply_nested_json(tmp_path, run, capsys):
    deep = _deep_json(tmp_path / "deep.jsonl")
    rc = main(["validate", str(_pairs_config(tmp_path, f"data: {{name: pairs, path: '{deep}'}}"))])
    one_line(capsys, rc, "deep.jsonl: line 1: invalid JSON: nested too deeply")
    rc = main(["eval", str(run), "--data", str(deep)])
    one_line(capsys, rc, "deep.jsonl: line 1: not valid JSON")


def test_nan_in_a_text_field(tmp_path, capsys):
    data = tmp_path / "nan.jsonl"
    data.write_text('{"question": "hi", "answer": "hello"}\n{"question": NaN, "answer": "hello"}\n')
    rc = main(["validate", str(_pairs_config(tmp_path, f"data: {{name: pairs, path: '{data}'}}"))])
    one_line(capsys, rc, "nan.jsonl: line 2: NaN is not a JSON value")
    data.write_text('{"question": "hi", "answer": Infinity}\n')
    rc = main(["validate", str(_pairs_config(tmp_path, f"data: {{name: pairs, path: '{data}'}}"))])
    one_line(capsys, rc, "line 1: Infinity is not a JSON value")


def test_nan_text_from_python_records(tmp_path):
    from cellnet_core.errors import DataError
    from cellnet_datasets.readers import get_text

    with pytest.raises(DataError, match=r"x.csv: line 3: field 'question' is nan, not a text"):
        get_text({"question": float("nan")}, "question", "x.csv", 3)


def _selection(path: Path, rows: list[tuple[str, list[int]]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "candidates": [f"{q} answer {i}" for i in range(len(labels))],
                                        "labels": labels}) + "\n" for q, labels in rows))
    return path


def test_selection_file_without_positives(tmp_path, run, capsys):
    none = _selection(tmp_path / "none.jsonl", [("hi", [0, 0]), ("yo", [0, 0, 0])])
    rc = main(["eval", str(run), "--data", str(none)])
    one_line(capsys, rc, "none.jsonl: no usable items: 2 item(s) without a candidate labelled 1 (line(s) 1, 2)")


def test_selection_items_without_positives_are_dropped_with_a_count(tmp_path, run, capsys, caplog):
    some = _selection(tmp_path / "some.jsonl", [("hi", [0, 1]), ("yo", [0, 0]), ("hey", [1, 0]), ("so", [0])])
    assert main(["eval", str(run), "--data", str(some), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["questions"] == 2
    warned = [r for r in caplog.records if r.name == "cellnet.datasets" and r.levelname == "WARNING"]
    assert len(warned) == 1
    assert ("some.jsonl: dropped 2 item(s) without a candidate labelled 1 (line(s) 2, 4): nothing to rank first; "
            "2 item(s) kept") in warned[0].getMessage()


# -- questions ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["ask", "eval"])
@pytest.mark.parametrize("k", ["-3", "0"])
def test_k_below_one(run, capsys, command, k):
    rc = main([command, str(run), *(["hi"] if command == "ask" else []), "-k", k])
    one_line(capsys, rc, f"{command}: -k must be at least 1, got {k}")


def test_empty_questions_are_named_and_skipped(run, capsys):
    assert main(["ask", str(run), "  ", "hello", "", "--json"]) == 0
    captured = capsys.readouterr()
    assert [row["question"] for row in json.loads(captured.out)] == ["hello"]
    assert "ask: skipped 2 empty question(s) (question 1, 3)" in captured.err
    rc = main(["ask", str(run), " ", "\t"])
    one_line(capsys, rc, "ask: nothing to answer: 2 empty question(s)")


def test_blank_stdin_lines_are_named_and_skipped(run):
    r = cli("ask", str(run), stdin=b"hello\n\n   \nthank you\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count("Q: ") == 2
    assert "ask: skipped 2 empty stdin line(s) (stdin line 2, 3)" in r.stderr.decode()


def test_invalid_utf8_question_in_argv(run):
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "ask", str(run), b"hi \xff there"],
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    proc_one_line(r, "ask: question 1 is not valid UTF-8 (byte 0xff at character 4)")


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_invalid_utf8_question_on_stdin(run, locale, monkeypatch):
    monkeypatch.setenv("LC_ALL", locale)
    r = cli("ask", str(run), stdin=b"hello\nhi \xc3\x28 there\n")
    proc_one_line(r, "ask: stdin line 2 is not valid UTF-8 (byte 0xc3 at column 4)")


# -- what validate catches before training would -----------------------------------------------------
LATTICE_CONFIG = GREETINGS_CONFIG.replace(
    "reshaper: {name: flat, channels: 1}", "reshaper: {name: surface, shape: [4, 4, 2], channels: 4}").replace(
    "core: {name: identity}", "core: {name: lattice, steps: 2}").replace(
    "training: {name: retrieval}", "training: {name: dialogue, epochs: 1}")


@pytest.fixture
def lattice(tmp_path) -> Path:
    cfg = tmp_path / "lattice.yaml"
    cfg.write_text(LATTICE_CONFIG)
    return cfg


def test_lattice_config_is_valid(lattice, capsys):
    assert main(["validate", str(lattice)]) == 0


@pytest.mark.parametrize("command", ["validate", "train"])
def test_zero_weight_loss_list(lattice, tmp_path, capsys, command):
    extra = ["--run-dir", str(tmp_path / "run")] if command == "train" else []
    rc = main([command, str(lattice), *extra, "--set", "training.loss=[{name: cosine, weight: 0}, {name: mse, weight: 0}]"])
    one_line(capsys, rc, "training.loss: every loss term has weight 0, so nothing would be trained")
    rc = main([command, str(lattice), *extra, "--set", "training.loss={name: infonce, weight: 0}"])
    one_line(capsys, rc, "every loss term has weight 0")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
    assert main(["validate", str(lattice), "--set", "training.loss=[{name: cosine, weight: 0}, mse]"]) == 0


@pytest.mark.parametrize("command", ["validate", "train"])
def test_reshaper_out_dim_that_does_not_match(lattice, tmp_path, capsys, command):
    extra = ["--run-dir", str(tmp_path / "run")] if command == "train" else []
    rc = main([command, str(lattice), *extra, "--set", "reshaper.out_dim=100"])
    one_line(capsys, rc, "reshaper: out_dim: 100, but encoder 'hashing' gives 256-dim embeddings", "set it to 256")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("reshaper, needle", [
    ("{name: permuted, shape: [4, 4, 4], channels: 2}", "shape [4, 4, 4] × channels 2 = 128 slots, but encoder "
                                                        "'hashing' gives 256 dims"),
    ("{name: permuted, channels: 3}", "channels: 3 does not divide the embedding size 256"),
    ("{name: pair-faces, adapter: exact}", "'exact' needs face points × channels = D; got 64 × 6 = 384 for D = 256"),
    ("{name: pair-faces, shape: [2, 2, 2], channels: 4}", "the face holds 16 values (points × channels), fewer "
                                                          "than the 256"),
    ("{name: surface, shape: [2, 2, 2], channels: 4, init: inverse}", "'inverse' needs input points × channels ≥ D"),
    ("{name: flat, shape: [8, 8, 8], channels: 1}", "= 512, but encoder 'hashing' gives 256 dims"),
])
def test_reshaper_and_teacher_sizes(lattice, capsys, reshaper, needle):
    rc = main(["validate", str(lattice), "--no-data", "--set", f"reshaper={reshaper}"])
    one_line(capsys, rc, "lattice.yaml: reshaper: ", needle)


def test_context_planes_size_against_the_teacher(lattice, capsys):
    rc = main(["validate", str(lattice), "--no-data", "--set", "reshaper={name: context-planes, adapter: exact}",
               "--set", "training={name: context}"])
    one_line(capsys, rc, "reshaper: adapter: 'exact' needs X·Y·C = D; got 8·8·6 = 384 for D = 256")


def test_minilm_size_is_known_at_validation(lattice, capsys):
    rc = main(["validate", str(lattice), "--no-data", "--set", "encoder={name: minilm}",
               "--set", "reshaper={name: flat, shape: [16, 1, 1], channels: 16}"])
    one_line(capsys, rc, "encoder 'minilm' gives 384 dims")
    assert main(["validate", str(lattice), "--no-data", "--set", "encoder={name: minilm}",
                 "--set", "reshaper={name: flat, shape: [24, 1, 1], channels: 16}"]) == 0


def test_unknown_baseline(lattice, capsys):
    rc = main(["validate", str(lattice), "--no-data", "--set", "eval.baselines=[identity, ridgee]"])
    one_line(capsys, rc, "lattice.yaml: eval.baselines: unknown 'ridgee'; available: ", "ridge")


def test_unknown_distill_teacher(lattice, capsys):
    rc = main(["validate", str(lattice), "--no-data", "--set",
               "training={name: distill, teachers: [{encoder: {name: hashing}}, {encoder: {name: minilmm}}]}"])
    one_line(capsys, rc, "training.teachers[1].encoder: unknown 'minilmm'", "did you mean 'minilm'?")
    rc = main(["validate", str(lattice), "--no-data", "--set",
               "training={name: distill, teachers: [{encoder: {name: hashing, dimm: 64}}]}"])
    one_line(capsys, rc, "training.teachers[0].encoder.dimm: unknown field")


@pytest.mark.parametrize("options, needle", [
    ("core.kernel_options={slab: 3}", "core.kernel_options.slab: unknown field"),
    ("core.kernel_options={block_cells: -1}", "core.kernel_options.block_cells: Input should be greater than"),
])
def test_kernel_options(lattice, capsys, options, needle):
    rc = main(["validate", str(lattice), "--no-data", "--set", "core.kernel=fused", "--set", options])
    one_line(capsys, rc, needle)


# -- memory ---------------------------------------------------------------------------------------------
HUGE = "reshaper.shape=[1000, 1000, 1000]"  # 10⁹ cells


@pytest.mark.parametrize("command", ["validate", "train"])
def test_billion_cell_lattice_is_refused_by_estimated_memory(lattice, tmp_path, capsys, command):
    extra = ["--run-dir", str(tmp_path / "run")] if command == "train" else []
    rc = main([command, str(lattice), *extra, "--set", HUGE])
    line = one_line(capsys, rc, "training needs at least 3.1 TB of memory",
                    "3 lattice states of 1,000,000,000 cells × 4 channels × batch 64 = 3.1 TB",
                    "available; make the lattice")
    assert "GB available" in line or "TB available" in line
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_memory_estimate_parts(lattice):
    from cellnet_core import api
    from cellnet_core.config import check_memory

    config = api.load_config(str(lattice), ["training.batch_size=8", "core.steps=5"])
    cells, channels, dim, points = 4 * 4 * 2, 4, 256, 4 * 4
    states = 6 * 8 * cells * channels * 4  # steps + 1 states of the batch, float32
    adapters = ((dim + 1) * points * channels + (points * channels + 1) * dim) * 4 * 4  # ×4: weights, grads, AdamW
    assert check_memory(config, available=10**12) == states + adapters
    with pytest.raises(ConfigError, match=r"^lattice.yaml: training needs at least 554\.0 kB of memory \(reshaper: "
                                          r"learned adapters .* = 529\.4 kB; core: 6 lattice states of 32 cells × 4 "
                                          r"channels × batch 8 = 24\.6 kB\), but this machine has 100\.0 kB available"):
        check_memory(config, "lattice.yaml", available=10**5)
    untrained = api.load_config(str(lattice), ["training=retrieval"])  # the core is not trained by gradient
    assert check_memory(untrained, available=10**12) == adapters // 4  # no batch; no gradients or optimiser state


# -- OS errors: one line naming the path, nothing half-written ------------------------------------------
def test_disk_full_device(run, capsys):
    rc = main(["schema", "--out", "/dev/full"])
    one_line(capsys, rc, "error: /dev/full: No space left on device")
    assert Path("/dev/full").is_char_device()  # written to, never replaced by a rename
    rc = main(["eval", str(run), "--dump", "/dev/full"])
    one_line(capsys, rc, "/dev/full: No space left on device")
    assert Path("/dev/full").is_char_device()


def test_disk_full_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, capsys):
    out = tmp_path / "schema.json"
    out.write_text("old\n")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc = main(["schema", "--out", str(out)])
    one_line(capsys, rc, f"error: {out}: No space left on device")
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["schema.json"]


def test_missing_output_folder(run, tmp_path, capsys):
    rc = main(["schema", "--out", str(tmp_path / "nope" / "schema.json")])
    one_line(capsys, rc, "schema: --out", "no such folder", "nope' (create it first)")
    rc = main(["eval", str(run), "--dump", str(tmp_path / "nope" / "rows.jsonl")])
    one_line(capsys, rc, "eval: --dump", "no such folder")
    assert not (tmp_path / "nope").exists()


def test_output_path_through_a_file(greet, capsys):
    rc = main(["train", str(greet), "--run-dir", "/dev/full/run"])
    one_line(capsys, rc, "/dev/full/.run.partial: Not a directory")
    rc = main(["cache", "info", "--dir", "/dev/full"])
    one_line(capsys, rc, "error: /dev/full: Not a directory")


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except OSError:
        return folder
    probe.unlink()  # root ignores the mode bits: /sys refuses new files even to root
    if not os.access("/sys", os.W_OK) or _refuses("/sys/cellnet-probe"):
        return Path("/sys")
    pytest.skip("no folder here refuses writes")


def _refuses(path: str) -> bool:
    try:
        Path(path).touch()
    except OSError:
        return True
    Path(path).unlink()
    return False


def test_read_only_folder(greet, tmp_path, capsys):
    folder = _read_only_folder(tmp_path)
    before = set(os.listdir(folder))
    rc = main(["schema", "--out", str(folder / "schema.json")])
    one_line(capsys, rc, f"{folder / 'schema.json'}: Permission denied")
    rc = main(["train", str(greet), "--run-dir", str(folder / "run")])
    one_line(capsys, rc, str(folder), "Permission denied")
    assert set(os.listdir(folder)) == before


def test_unexpected_error_is_one_line_with_where(monkeypatch, capsys):
    import cellnet_core.cli as cli_module

    def broken(args):
        raise TypeError("unsupported operand")

    parser = cli_module.build_parser
    monkeypatch.setattr(cli_module, "build_parser", lambda: _with_func(parser(), broken))
    rc = main(["plugins"])
    line = _errors(capsys)
    assert rc == 1 and len(line) == 1
    assert "unexpected TypeError: unsupported operand" in line[0] and "CELLNET_DEBUG=1" in line[0]
    monkeypatch.setenv("CELLNET_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["plugins"])


def _with_func(parser, func):
    parser._subparsers._group_actions[0].choices["plugins"].set_defaults(func=func)
    return parser
