"""A Redis server of a test's own, to stop and start under a running pipeline:
`from redis_server import PrivateRedis`.

The shared server on 6379 must never be stopped by a test. This one listens on a free
loopback port with no persistence of its own (``--save '' --appendonly no``); ``stop()``
writes one snapshot (``SAVE``) into the test's temporary folder and ends the server
(SIGTERM: every connection is cut), and ``start()`` loads the snapshot again, so a
restart keeps the data, as a store that comes back would. Its command statistics (``INFO
commandstats``) count this test's calls only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``start()``, ``stop()`` (connections cut), ``start()`` again, ``close()``; ``url``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on this machine")
        self.binary = binary
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="headrace-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> PrivateRedis:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.root)]
        self.proc = subprocess.Popen(
            argv, stdout=(self.root / "server.log").open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:  # the port taken, for one
                raise RuntimeError(
                    f"redis-server did not start: {(self.root / 'server.log').read_text()}"
                )
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except redis.exceptions.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {(self.root / 'server.log').read_text()}"
                    ) from None
            time.sleep(0.01)

    def stop(self) -> None:
        """Snapshot, then shut down: every connection is cut."""
        assert self.proc is not None
        with self.client() as c:
            c.save()
        # SIGTERM: no snapshot of its own (`--save ''`); the one above is what it reloads.
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def calls(self, command: str) -> int:
        """How many times ``command`` ran since the server started."""
        with self.client() as c:
            stats = c.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
