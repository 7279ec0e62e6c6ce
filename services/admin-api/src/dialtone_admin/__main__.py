"""``python -m dialtone_admin`` runs the admin API."""

from dialtone_admin.main import main

if __name__ == "__main__":
    main()
