from dialtone_bridge.main import main

main()
