"""The discrete-event (SimPy) model of a RAG pipeline."""

from ragstress.model.engine import ProgressCallback, simulate

__all__ = ["ProgressCallback", "simulate"]
