from forwardpass.cli.main import main

main()
