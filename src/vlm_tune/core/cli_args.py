"""Command-line parsing shared by every command: one flag style, one error style."""

from __future__ import annotations

import argparse

from vlm_tune.core.errors import UserError


class ArgParser(argparse.ArgumentParser):
    """argparse with the project's conventions:
    - errors are one `error: ...` line and exit code 2 (a UserError), like every vlm-tune error;
    - flags are spelled with underscores, as HF/TRL flags and recipe keys are (`--max_new_tokens`);
      the dashed spelling (`--max-new-tokens`) is accepted as an alias, so older command lines keep working.
    """

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")

    def add_argument(self, *names, **kwargs):
        spelled = []
        for name in names:
            if name.startswith("--"):
                underscored = "--" + name[2:].replace("-", "_")
                dashed = "--" + name[2:].replace("_", "-")
                spelled += [n for n in dict.fromkeys((underscored, dashed)) if n not in spelled]
            else:
                spelled.append(name)
        if spelled and spelled[0].startswith("--") and "dest" not in kwargs:
            kwargs["dest"] = spelled[0][2:]
        return super().add_argument(*spelled, **kwargs)


def add_subparsers_with_argparser(parser: argparse.ArgumentParser, **kwargs):
    """Sub-commands whose parsers follow the same conventions (`parser_class=ArgParser`)."""
    return parser.add_subparsers(parser_class=ArgParser, **kwargs)
