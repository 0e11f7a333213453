"""The typer application, its global options and the error boundary; command groups register on ``app``.

Each command parses, makes ONE library call and renders the result.

Errors from the library (:class:`medpipe.errors.MedpipeError`) are printed as one line and exit with code 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medpipe.errors import MedpipeError

app = typer.Typer(
    name="medpipe",
    help="3D CT/MRI segmentation: DICOM/NIfTI in, masks on the scanner's grid out, metrics you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: flags without a '<bool>' type column, no boxes cut to 80 columns
    context_settings={"max_content_width": 120},
)
out = Console()
err_console = Console(stderr=True)
_state = {"debug": False}
#: Line width when stdout/stderr is a file or pipe (logs keep whole paths and numbers; tables are sized to content).
PIPE_WIDTH = 1000

@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug
    for console in (out, err_console):  # a file or a pipe: full lines, not rich's 80-column default
        console.width = PIPE_WIDTH if not console.is_terminal else None  # type: ignore[assignment]
    if not debug:
        # Import-time noise from MONAI's optional GPU DICOM decoder, irrelevant to medpipe's own DICOM reader.
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn library errors into one red line on stderr and exit code 1 (a traceback only with --debug)."""
    try:
        yield
    except MedpipeError as err:
        if _state["debug"]:
            raise
        # escaped: messages hold bracketed text ("[3-2]", "[Errno 28]") that rich would take for markup
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
