"""Fixtures of the rating-app tests (helpers in rate_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rate_helpers import RateServer


@pytest.fixture
def start_server():
    """start_server(tasks, db, *extra) -> a running RateServer; every one is stopped at the end."""
    started = []

    def start(tasks, db, *extra, **kwargs) -> RateServer:
        server = RateServer(Path(tasks), Path(db), *extra, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
        if server.process.stdout:
            server.process.stdout.close()
            server.process.stderr.close()
