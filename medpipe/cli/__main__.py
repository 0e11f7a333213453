"""``python -m medpipe.cli`` (as torchrun runs it)."""

from medpipe.cli.app import main

main()
