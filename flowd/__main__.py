"""`python -m flowd` runs the CLI."""

from flowd.cli.app import main

main()
