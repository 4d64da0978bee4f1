"""``python -m ragstress.cli``: the same command line as the ``ragstress`` script."""

from ragstress.cli.main import main

main()
