"""cellnet teacher encoders: ``hf``, ``minilm``, ``smollm2``, ``ensemble``."""

__version__ = "0.1.0"
