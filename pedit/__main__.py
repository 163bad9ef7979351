"""`python -m pedit` (and `accelerate launch -m pedit train ...`)."""

from pedit.cli import main

main()
