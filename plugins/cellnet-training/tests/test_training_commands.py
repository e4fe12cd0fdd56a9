"""``--nproc`` is the training plugin's option of ``cellnet train``: it takes the run over only for
several processes, never inside a worker, and refuses a count below 1 in one line."""

from __future__ import annotations

import argparse

import pytest

from cellnet_core.errors import ConfigError


def _args(**kw) -> argparse.Namespace:
    base = dict(config="c.yaml", run_dir=None, resume=None, restart=False, overwrite=False, set=[], nproc=1,
                argv=["train", "c.yaml"])
    return argparse.Namespace(**{**base, **kw})


def test_nproc_is_added_to_train_with_help():
    from cellnet_training.commands import configure_train

    parser = argparse.ArgumentParser()
    configure_train(parser)
    assert parser.parse_args([]).nproc == 1 and parser.parse_args(["--nproc", "3"]).nproc == 3
    action = next(a for a in parser._actions if a.dest == "nproc")
    assert action.help and "data-parallel" in action.help


def test_one_process_or_a_worker_lets_train_proceed(monkeypatch):
    from cellnet_core import api
    from cellnet_training.commands import run_train

    assert run_train(_args(nproc=1)) is None
    monkeypatch.setenv(api.STAGING_ENV, "/tmp/somewhere/.run.partial")  # inside a launched worker
    assert run_train(_args(nproc=4)) is None


def test_a_count_below_one_is_refused():
    from cellnet_training.commands import run_train

    with pytest.raises(ConfigError, match=r"^train: --nproc must be at least 1 \(got 0\)$"):
        run_train(_args(nproc=0))


def test_several_processes_check_the_arguments_before_launching(tmp_path):
    from cellnet_training.commands import run_train

    with pytest.raises(ConfigError, match="give a CONFIG file or --resume RUN_DIR, not both"):
        run_train(_args(nproc=2, resume=str(tmp_path / "run")))
    with pytest.raises(ConfigError, match="no such file"):
        run_train(_args(nproc=2, config=str(tmp_path / "missing.yaml"), run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_the_plugin_registers_the_option_through_the_hook():
    from cellnet_core.commands import CommandRegistry
    from cellnet_training import plugin
    from cellnet_training.commands import run_train

    cli = CommandRegistry()
    cli.current_plugin = "core"
    cli.add_command("train", help="train", configure=lambda p: None, run=lambda a: 0)
    cli.current_plugin = "training"
    plugin.cellnet_register_commands(cli)
    (opt,) = cli.options("train")
    assert opt.run is run_train and opt.plugin == "training" and "--nproc 2" in opt.examples
