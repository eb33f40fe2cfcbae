"""`python -m data_builders.scenes ...` (see data_builders.scenes)."""

import sys

from data_builders.scenes.cli import main
from vlm_tune.core.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
