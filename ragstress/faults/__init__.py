"""Fault semantics shared by the model and the chaos proxy: see :mod:`ragstress.faults.plan`."""

from ragstress.faults.plan import NO_EFFECT, CallEffect, FaultPlan, status_outcome

__all__ = ["NO_EFFECT", "CallEffect", "FaultPlan", "status_outcome"]
