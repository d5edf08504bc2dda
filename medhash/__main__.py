from medhash.cli import main

main()
