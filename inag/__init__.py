"""INAG: conditional neural architecture search and integer-only edge deployment."""

__version__ = "0.1.0"
