"""``python -m hf_freeze`` runs the ``hf-freeze`` command."""

import sys

from hf_freeze.cli import main

sys.exit(main())
