"""``python -m engine`` = the ``msfm`` command line."""

from .cli import main

raise SystemExit(main())
