"""Hub reachability: with no network, loaders retry for minutes per file; we check once and go offline.

Offline mode still loads anything already in the local HF cache, so users with downloaded
checkpoints keep working; everything else fails at once with our one-line error.
"""

from __future__ import annotations

import functools
import socket
from urllib.parse import urlparse


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
