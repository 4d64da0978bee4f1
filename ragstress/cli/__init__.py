"""The ``ragstress`` command line: a thin layer over the library API."""

from ragstress.cli.main import main

__all__ = ["main"]
