"""cellnet-sweep: ``cellnet sweep`` (Optuna studies over config paths), the ``tensorboard``,
``mlflow`` and ``csv`` trackers, model cards (``README.md`` in every saved run, ``cellnet card``)
and ``cellnet compare``."""

__version__ = "0.1.0"
