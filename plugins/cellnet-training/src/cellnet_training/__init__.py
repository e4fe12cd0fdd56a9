"""cellnet training strategies: autoencoder, dialogue, curriculum, decoder and distill."""

__version__ = "0.1.0"
