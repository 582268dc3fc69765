"""``python -m prunelab`` runs the command line."""

import sys

from prunelab.cli import main

sys.exit(main())
