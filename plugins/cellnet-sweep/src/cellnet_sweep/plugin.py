"""Registers the trackers and the ``sweep``, ``compare`` and ``card`` commands, and observes runs:
trackers and the sweep pruner at every epoch, trackers and the model card when a run is saved
and when ``cellnet eval`` measured it. Only registration happens at import: Optuna, torch and
matplotlib load when a command or a tracker runs."""

from __future__ import annotations

from cellnet_core import hookimpl


@hookimpl
def cellnet_register_components(registry) -> None:
    """The ``tensorboard``, ``mlflow`` and ``csv`` trackers (``tracking: [...]`` in a run config)."""
    from cellnet_sweep import tracking as t

    registry.add("tracker", "tensorboard", t.TensorBoardConfig, "cellnet_sweep.tracking:build_tensorboard",
                 summary="TensorBoard event files (config, per-epoch metrics, final and test tables, curves)",
                 requires=("tensorboard",), install_hint="pip install 'cellnet-sweep[tensorboard]'")
    registry.add("tracker", "mlflow", t.MLflowConfig, "cellnet_sweep.tracking:build_mlflow",
                 summary="an MLflow run per cellnet run (local file store ./mlruns by default)",
                 requires=("mlflow",), install_hint="pip install 'cellnet-sweep[mlflow]'")
    registry.add("tracker", "csv", t.CSVConfig, "cellnet_sweep.tracking:build_csv",
                 summary="CSV files in the run directory (config, epochs, final, eval)")
    t.OBSERVER.registry = registry


@hookimpl
def cellnet_register_commands(cli) -> None:
    """``cellnet sweep``, ``cellnet compare`` and ``cellnet card``."""
    from cellnet_sweep import commands as c

    cli.add_command("sweep", help=c.SWEEP_HELP, configure=c.configure_sweep, run=c.run_sweep,
                    examples=c.SWEEP_EXAMPLES, description=c.SWEEP_DESCRIPTION)
    cli.add_command("compare", help=c.COMPARE_HELP, configure=c.configure_compare, run=c.run_compare,
                    examples=c.COMPARE_EXAMPLES)
    cli.add_command("card", help=c.CARD_HELP, configure=c.configure_card, run=c.run_card, examples=c.CARD_EXAMPLES)


@hookimpl
def cellnet_on_epoch_end(run_dir, epoch, metrics) -> None:
    """The sweep pruner first (it may stop the run), then the run's trackers."""
    from cellnet_sweep.sweep import prune_hook
    from cellnet_sweep.tracking import OBSERVER

    OBSERVER.epoch_end(run_dir, epoch, metrics)
    prune_hook(run_dir, epoch, metrics)


@hookimpl
def cellnet_on_train_end(run_dir, result) -> None:
    """Finish the run's trackers; write its model card."""
    from cellnet_sweep.card import write_card
    from cellnet_sweep.tracking import OBSERVER

    OBSERVER.train_end(run_dir, result)
    write_card(run_dir, OBSERVER.registry)


@hookimpl
def cellnet_on_eval_end(run_dir, result) -> None:
    """Keep the test result in RUN/eval.json, log it to the trackers, rewrite the model card."""
    from cellnet_sweep.card import save_eval, write_card
    from cellnet_sweep.tracking import OBSERVER

    save_eval(run_dir, result)
    OBSERVER.eval_end(run_dir, result)
    write_card(run_dir, OBSERVER.registry)
