"""``python -m medpipe``."""

from medpipe.cli import main

main()
