"""``python -m pathodet ...``: the CLI, also what ``torchrun -m pathodet train`` starts."""

from pathodet.cli import main

main()
