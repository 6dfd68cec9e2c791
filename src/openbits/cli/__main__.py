"""`python -m openbits.cli`."""

from .main import main

main()
