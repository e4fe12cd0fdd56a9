"""cellnet-lattice: the 3D cellular lattice core (cells, topologies, reshapers, reference kernel)."""

__version__ = "0.1.0"
