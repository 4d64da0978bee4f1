"""The closed loop against the live reference stack: measure, calibrate, predict, validate."""

from ragstress.demo.loop import DemoError, DemoResult, run_demo

__all__ = ["DemoError", "DemoResult", "run_demo"]
