from dialtone_gateway.main import main

main()
