"""``python -m cfgen``: the command-line tool."""
from cfgen.cli.main import main

main()
