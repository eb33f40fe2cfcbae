"""Secret scrubbing: values of secret-looking environment variables and credential recipe keys
never reach a file we write (recipe.yaml, reports, logs, tracker runs)."""

from __future__ import annotations

import os
import re

REDACTED = "***"
MIN_SECRET_LENGTH = 8  # shorter values ("0", "true") would mangle unrelated text and are no real secrets
SECRET_ENV_NAME = re.compile(r"(_TOKEN|_KEY)$|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Recipe keys that hold credentials. TRL's pad_token / eos_token end in "_token" too but are vocabulary.
SECRET_RECIPE_KEY = re.compile(r"^(hub_token|.*_api_key|.*access_token|.*auth_token|.*secret.*|.*password.*)$", re.IGNORECASE)


# --- secret scrubbing ------------------------------------------------------------------------
def secret_values() -> list[str]:
    """Current values of secret-looking environment variables, longest first (so overlaps scrub fully)."""
    values = {value for name, value in os.environ.items()
              if SECRET_ENV_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret value replaced by `***`."""
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return text


def is_secret_key(key: str) -> bool:
    """Recipe keys are lower-case (hub_token, but not TRL's pad_token); env-var names (HF_TOKEN, WANDB_API_KEY) are not."""
    return bool(SECRET_RECIPE_KEY.match(key)) or (not key.islower() and bool(SECRET_ENV_NAME.search(key)))


def scrub(value, secrets: list[str] | None = None, key: str | None = None):
    """A copy of a recipe-like structure with secret keys blanked and secret values scrubbed from strings.
    Env-var names (the recipe's `env:` section) and recipe keys that hold credentials are both caught."""
    secrets = secret_values() if secrets is None else secrets
    if key is not None and value not in (None, "") and is_secret_key(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: scrub(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str):
        return scrub_text(value, secrets)
    return value


def scrub_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret flags (`--hub_token X`, `--x_api_key=Y`) and env secrets blanked."""
    secrets = secret_values()
    out: list[str] = []
    blank_next = False
    for arg in argv:
        flag = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if blank_next:
            out.append(REDACTED)
            blank_next = False
        elif flag and SECRET_RECIPE_KEY.match(flag):
            if "=" in arg:
                out.append(f"--{flag}={REDACTED}")
            else:
                out.append(arg)
                blank_next = True
        else:
            out.append(scrub_text(arg, secrets))
    return out


def scrub_fields(obj, skip: tuple[str, ...] = ()) -> list[str]:
    """Scrub secret values out of a dataclass's text fields (str, or lists of str) in place, before the object
    is pickled or handed to a tracker (TrainingArguments: `training_args.bin`, W&B config, TensorBoard
    hparams); `skip` names fields that are paths (renaming a folder would write elsewhere). Returns the
    names of the fields that held a secret."""
    from dataclasses import fields, is_dataclass

    if not is_dataclass(obj):
        return []
    secrets = secret_values()
    changed = []
    for f in fields(obj):
        value = getattr(obj, f.name, None)
        if f.name in skip or not value:
            continue
        if isinstance(value, str):
            clean = scrub_text(value, secrets)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            clean = [scrub_text(v, secrets) for v in value]
        else:
            continue
        if clean != value:
            setattr(obj, f.name, clean)
            changed.append(f.name)
    return changed
