"""`python -m fedge`, the same as the `fedge` command (for a venv whose bin/ is not on PATH)."""

import sys

from fedge.cli import main

sys.exit(main())
