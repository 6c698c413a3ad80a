"""`python -m daemon.igrtctl ...`: the same as the installed `igrtctl`."""

from daemon.igrtctl.main import main

raise SystemExit(main())
