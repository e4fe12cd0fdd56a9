"""Fast lattice step kernels for cellnet (see docs/plugins/kernels.md)."""

__version__ = "0.1.0"
