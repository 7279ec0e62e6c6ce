"""``python -m dialtone_writer`` runs the service; ``python -m dialtone_writer migrate`` only migrates."""

from dialtone_writer.main import main

if __name__ == "__main__":
    main()
