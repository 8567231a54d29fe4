"""``python -m retrieval.cli`` (what ``torchrun ... -m retrieval.cli train`` runs)."""

from . import main

main()
