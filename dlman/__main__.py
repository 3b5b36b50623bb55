"""``python -m dlman`` runs the command line."""

from dlman.cli import main

main()
