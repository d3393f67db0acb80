"""``python -m metaat.cli`` (what ``torchrun ... -m metaat.cli`` runs): the ``metaat`` command."""

from metaat.cli import main

main()
