"""Debian packages a test needs (Chromium for the dashboard's browser test): installed by
the test setup when missing, never by hand only.

Two test processes (pytest-xdist) may ask at once: a file lock makes the second wait for
the first's install. Where it cannot be installed, the test is skipped with apt's reason,
except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def ensure_command(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` first if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    lock = Path(tempfile.gettempdir()) / "headrace-tests-apt.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        found = shutil.which(command)
        if found:
            return found
        why = _install(package)
    found = shutil.which(command)
    if found:
        return found
    reason = f"{command} is not installed and `apt-get install {package}` failed: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _install(package: str) -> str:
    """Install ``package`` (after an index update if the first try fails); apt's last
    lines when it could not."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    attempts = (
        [["apt-get", "install", "-y", "-q", package]],
        [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]],
    )
    tail = ""
    for commands in attempts:
        for cmd in commands:
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                tail = str(exc)
                break
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                tail = lines[-1] if lines else f"exit status {done.returncode}"
                break
        else:
            return ""
    return tail
