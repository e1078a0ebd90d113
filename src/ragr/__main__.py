from ragr.cli.main import main

main()
