"""``python -m modelpkg``: the same as the ``modelpkg`` command."""

from modelpkg.cli.app import main

main()
