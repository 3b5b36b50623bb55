"""``python -m dlman.server``: ``dlman serve`` on its own."""

from dlman.server.command import main

main()
