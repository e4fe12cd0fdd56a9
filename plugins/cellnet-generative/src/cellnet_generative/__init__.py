"""cellnet generative decoders: teacher embedding → newly written text."""

__version__ = "0.1.0"
