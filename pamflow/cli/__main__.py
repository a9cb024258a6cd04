from pamflow.cli import main

main()
