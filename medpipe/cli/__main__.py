"""``python -m medpipe.cli`` (as torchrun runs it)."""

from medpipe.cli import main

main()
