"""`python -m ipe`: the same as the `ipe` command."""

from ipe.cli import main

main()
