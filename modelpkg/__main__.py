"""``python -m modelpkg``: the same as the ``modelpkg`` command."""

from modelpkg.cli import main

main()
