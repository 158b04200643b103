"""`python -m nas`: the `nas` command line (nas/cli.py)."""

from .cli import main

main()
