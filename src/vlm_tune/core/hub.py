"""Hub reachability: with no network, loaders retry for minutes per file; we check once and go offline.

Offline mode still loads anything already in the local HF cache, so users with downloaded
checkpoints keep working; everything else fails at once with our one-line error (`hub_error`, the
one message models and datasets share).
"""

from __future__ import annotations

import functools
import socket
from urllib.parse import urlparse

from vlm_tune.core.errors import UserError


# --- reachability ----------------------------------------------------------------------------
@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(hub_constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_unless_reachable() -> None:
    """Switch huggingface_hub, transformers and datasets to cache-only when the hub can't be reached."""
    if hub_reachable():
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True  # read at call time by transformers' is_offline_mode()
    datasets.config.HF_HUB_OFFLINE = True


# --- names and errors ------------------------------------------------------------------------
def is_hub_id(name: str) -> bool:
    """Spelled like a hub repo id (`owner/name`); anything starting with . / ~ or with another number of
    slashes is a local path (a missing one is reported as not found, without asking the hub)."""
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


def hub_reason(exc: Exception) -> str:
    """Why a hub load failed, in one short line: the error's first line, or its type when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def hub_error(what: str, exc: Exception, local: str, remedy: str) -> UserError:
    """One line for a hub load that failed: what, why, how to get it onto disk."""
    return UserError(
        f"cannot load {what}: not a local {local} and the Hugging Face Hub did not provide it ({hub_reason(exc)}). "
        f"Where the hub is reachable {remedy}"
    )
