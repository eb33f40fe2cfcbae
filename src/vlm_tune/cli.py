"""The `vlm-tune` command: dispatch through the command table; user errors become one line and exit code 2."""

from __future__ import annotations

import os
import sys
import warnings

from vlm_tune.runs.commands import COMMANDS, run, usage


def _check_commands() -> None:
    """Every command in the table names an importable module with a `main` (tests call this)."""
    import importlib

    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        if not callable(getattr(module, "main", None)):
            raise AssertionError(f"command {name}: {command.module} has no main(argv)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}' (see vlm-tune --help)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # TRL sets transformers' deprecated `gradient_checkpointing*` names itself; the warning is noise for users.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    from vlm_tune.core.errors import run_command

    return run_command(lambda args: run(argv[0], args), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
