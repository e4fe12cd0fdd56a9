"""cellnet phrase-bank decoder: embedding → the nearest known phrase(s)."""

__version__ = "0.1.0"
