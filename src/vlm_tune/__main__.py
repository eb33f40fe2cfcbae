"""`python -m vlm_tune COMMAND ...` = `vlm-tune COMMAND ...` (sweep starts its runs this way)."""

import sys

from vlm_tune.cli import main

sys.exit(main())
