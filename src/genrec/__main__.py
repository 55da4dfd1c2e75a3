from genrec.cli import main

main()
