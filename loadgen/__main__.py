"""`python -m loadgen`: the command-line entry point."""

from loadgen.cli import main

raise SystemExit(main())
