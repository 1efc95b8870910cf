"""`python -m sigstream ...`: the same command line as the `sigstream` script."""
from sigstream.cli import main

main()
