"""``python -m dialtone_tools``."""

from dialtone_tools.main import main

main()
