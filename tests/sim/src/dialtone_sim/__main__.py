"""``python -m dialtone_sim`` is the ``dialtone-sim`` command."""

from .cli import main

main()
