"""`python -m nnspec`: the same as the `nnspec` command."""

from nnspec.main import run

run()
