from paris.cli import main

main()
