"""`python -m data_builders.ratings --ratings FILE --output DIR [...]`: see data_builders.ratings."""

import sys

from data_builders.ratings.cli import main
from vlm_tune.core.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
