"""``python -m medpipe`` is the ``medpipe`` command."""

from medpipe.cli.app import main

main()
