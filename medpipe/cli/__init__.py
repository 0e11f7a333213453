"""The ``medpipe`` command line (typer): the only package that prints or imports rich."""

from medpipe.cli.app import app, main

__all__ = ["app", "main"]
