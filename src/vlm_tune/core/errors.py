"""The error family: UserError (and subclasses) is bad input a user can fix; `run_command` turns it into
one `error: ...` line and exit code 2. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input from the user (recipe, paths, data, machine): message names the file/row/key."""


def run_command(main, argv: list[str] | None = None) -> int:
    """Run a command's `main(argv)`: the one place a UserError becomes one `error: ...` line on stderr
    and exit code 2 (the `vlm-tune` CLI and every `python -m data_builders.X` go through here).
    A main that returns an int gives the exit code; any other result means success."""
    import sys

    try:
        result = main(sys.argv[1:] if argv is None else list(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
