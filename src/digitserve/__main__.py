"""`python -m digitserve` runs the command line."""

from digitserve.cli import main

raise SystemExit(main())
