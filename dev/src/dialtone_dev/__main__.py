from dialtone_dev.cli import main

main()
