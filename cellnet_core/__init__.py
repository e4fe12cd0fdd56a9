"""cellnet core: hook specs, component registry, config, pipeline and the ``cellnet`` command.

Text → teacher embedding → 3D cellular lattice → embedding → text, every part a plugin.

The Python API (:mod:`cellnet_core.api`) is re-exported here: :func:`load_plugins`,
:func:`load_config`, :func:`resolved_config`, :func:`train`, :func:`load_run`, :func:`answer`,
:func:`evaluate`.
"""

__version__ = "0.1.0"

from cellnet_core.errors import (  # noqa: E402
    CellnetError,
    CheckpointError,
    ConfigError,
    DataError,
    DuplicateComponentError,
    MissingDependencyError,
    UnknownComponentError,
)
from cellnet_core.hookspecs import hookimpl  # noqa: E402
from cellnet_core.api import (  # noqa: E402
    Plugins,
    answer,
    evaluate,
    load_config,
    load_plugins,
    load_run,
    resolved_config,
    train,
)

__all__ = [
    "__version__",
    "hookimpl",
    "Plugins",
    "answer",
    "evaluate",
    "load_config",
    "load_plugins",
    "load_run",
    "resolved_config",
    "train",
    "CellnetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DuplicateComponentError",
    "MissingDependencyError",
    "UnknownComponentError",
]
