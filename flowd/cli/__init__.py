"""The `flowd` command: Typer commands, each a few lines over TaskManager."""
