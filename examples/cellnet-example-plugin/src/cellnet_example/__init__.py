"""An example third-party cellnet plugin."""

__version__ = "0.1.0"
