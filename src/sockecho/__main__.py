"""``python -m sockecho`` runs the command line."""

import sys

from sockecho.cli import main

sys.exit(main())
