"""The ``medpipe`` command line (typer): the only package that prints or imports rich.

``app`` holds the global options and the error boundary; each module here registers one command group on it, in
the order ``medpipe --help`` lists them.
"""
# ruff: noqa: I001  (registration order is the order of the help listing)

from medpipe.cli.app import app
from medpipe.cli import training, inference, evaluation, datasets, dicom, dicomweb, models, nnunet, batch, explain

__all__ = ["app", "batch", "datasets", "dicom", "dicomweb", "evaluation", "explain", "inference", "main", "models",
           "nnunet", "training"]


def main() -> None:
    """Console-script entry point (``medpipe``)."""
    app()
