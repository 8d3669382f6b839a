"""``python -m fdm_cli ...`` runs the `fdm` command (also under ``torchrun -m fdm_cli``)."""

from fdm_cli.cli.app import main

main()
