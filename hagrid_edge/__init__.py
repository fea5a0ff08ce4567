"""hagrid-edge: HaGRID hand-gesture models from training to INT8 edge runtimes."""

__version__ = "0.1.0"
