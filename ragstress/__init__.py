"""ragstress: load-testing and chaos simulation for retrieval-augmented generation services."""

__version__ = "0.1.0"
__all__ = ["__version__"]
