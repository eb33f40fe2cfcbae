"""The one exception type the CLI turns into a single `error: ...` line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (recipe, paths, data, machine): message names the file/row/key."""
