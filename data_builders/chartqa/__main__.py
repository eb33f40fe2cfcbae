"""`python -m data_builders.chartqa ...` (see data_builders.chartqa)."""

import sys

from data_builders.chartqa.cli import main
from vlm_tune.core.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
