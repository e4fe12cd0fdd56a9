"""cellnet core: hook specs, component registry, config, pipeline and the ``cellnet`` command.

Text → teacher embedding → 3D cellular lattice → embedding → text, every part a plugin.
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

__all__ = [
    "__version__",
    "hookimpl",
    "CellnetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DuplicateComponentError",
    "MissingDependencyError",
    "UnknownComponentError",
]
