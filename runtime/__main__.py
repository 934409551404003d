"""`python -m nnspec.runtime COMMAND ...`: the same as `nnspec-runtime`."""

from nnspec.runtime.cli import run

run()
