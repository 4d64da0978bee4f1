"""The discrete-event (SimPy) model of a RAG pipeline."""

from ragstress.model.engine import Event, EventLog, ModelError, ProgressCallback, simulate

__all__ = ["Event", "EventLog", "ModelError", "ProgressCallback", "simulate"]
