"""Helpers of the rating-app tests: small task files with real images, and a real server process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from helpers import REPO

STARTUP_TIMEOUT_S = 30


def write_image(path: Path, color=(200, 80, 40), size=(48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_tasks(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def response_tasks(folder: Path, n_items: int = 3, responses=None) -> Path:
    """A response-mode task file: item k shows img/k.png with candidates `responses` (default three)."""
    rows = []
    for k in range(n_items):
        write_image(folder / "img" / f"{k}.png", color=(40 * k % 255, 120, 200))
        texts = responses or [f"a caption {k}", f"another caption {k}", "<script>alert(1)</script> & <b>bold</b>"]
        rows.append({"image": f"img/{k}.png", "prompt": f"describe picture {k}", "responses": texts, "group": "hidden-run"})
    return write_tasks(folder / "tasks.jsonl", rows)


def image_tasks(folder: Path, groups=("ckpt-a", "ckpt-b"), per_group: int = 3) -> Path:
    """An image-mode task file: per_group images per group, prompts shared across groups."""
    rows = []
    for g, group in enumerate(groups):
        for k in range(per_group):
            write_image(folder / "samples" / group / f"{k}.png", color=(60 * g, 30 * k, 150))
            rows.append({"image": f"samples/{group}/{k}.png", "prompt": f"prompt {k}", "group": group})
    return write_tasks(folder / "tasks.jsonl", rows)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RateServer:
    """`python -m vlm_tune rate serve` in its own process on 127.0.0.1 and a free port."""

    def __init__(self, tasks: Path, db: Path, *extra: str, host: str = "127.0.0.1", env=None):
        self.tasks, self.db, self.extra, self.host = tasks, db, extra, host
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.process = None
        self.port = None

    def start(self) -> "RateServer":
        self.port = free_port()
        argv = [sys.executable, "-m", "vlm_tune", "rate", "serve", str(self.tasks), "--db", str(self.db),
                "--host", self.host, "--port", str(self.port), *self.extra]
        self.process = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise AssertionError(f"server exited {self.process.returncode}: {out}\n{err}")
            try:
                if self.request("GET", "/api/config")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise AssertionError("server did not start")

    def request(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        """(status, parsed JSON or bytes, headers); `raw` sends bytes as they are."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode("utf-8"))
            sent = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, path, body=data, headers={**sent, **(headers or {})})
            response = connection.getresponse()
            payload = response.read()
            kind = response.getheader("content-type", "")
            return response.status, json.loads(payload) if kind.startswith("application/json") else payload, dict(
                (k.lower(), v) for k, v in response.getheaders())
        finally:
            connection.close()

    def get(self, path: str, **kwargs):
        status, data, _ = self.request("GET", path, **kwargs)
        return status, data

    def post(self, path: str, body=None, **kwargs):
        status, data, _ = self.request("POST", path, body, **kwargs)
        return status, data

    def banner(self) -> str:
        """What serve printed before it started serving (up to its `rate at ...` line)."""
        lines = []
        while not lines or not lines[-1].startswith("rate at"):
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
        return "".join(lines)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> tuple[str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.communicate()
