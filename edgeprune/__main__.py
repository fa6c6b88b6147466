"""`python -m edgeprune ...`, and so `accelerate launch -m edgeprune recover ...`."""

from edgeprune.cli import main

main()
