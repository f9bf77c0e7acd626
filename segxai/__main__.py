"""`python -m segxai` runs the command-line interface."""
import sys

from segxai.cli import main

sys.exit(main())
