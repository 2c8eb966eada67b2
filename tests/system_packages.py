"""Debian packages a test needs (Chromium for the dashboard's browser test, promtool for
the alert rules): installed by the test setup when missing, never by hand only.

Two test processes (pytest-xdist) may ask at once: one file lock makes the second wait
for the first's install. Where a package cannot be installed, the test is skipped with
apt's reason, except under ``CI=true``, where that is a failure (a CI machine can install
it: a skip would hide that).

A package whose install script starts a service (Debian's ``prometheus`` starts its server
on :9090) is kept from doing so by a ``policy-rc.d`` that forbids every start, put in place
for the install where the machine has none.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

LOCK = Path(tempfile.gettempdir()) / "headrace-tests-apt.lock"
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def ensure_command(
    command: str,
    package: str,
    *,
    recommends: bool = True,
    after_install: Callable[[], None] | None = None,
) -> str:
    """The path of ``command``, installing Debian's ``package`` first if it is missing
    (``after_install`` runs once it was installed, still under the lock)."""
    found = shutil.which(command)
    if found:
        return found
    why = f"{command} is not on PATH"
    with open(LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        found = shutil.which(command)
        if found:
            return found
        started = time.monotonic()
        failed = _install(package, recommends)
        found = shutil.which(command)
        if found:
            print(f"installed {package} with apt in {time.monotonic() - started:.1f} s")
            if after_install is not None:
                after_install()
            return found
        why = failed or why
    reason = f"{command} is missing and `apt-get install {package}` could not install it: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _install(package: str, recommends: bool) -> str | None:
    """Install ``package`` (after an index update if the first try fails); ``None``, or
    apt's last lines when it could not."""
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install it"
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=120"]
    cmd += [] if recommends else ["--no-install-recommends"]
    cmd.append(package)
    placed_policy = False
    try:
        if not POLICY_RC.exists():
            POLICY_RC.write_text("#!/bin/sh\n# headrace tests: no service starts\nexit 101\n")
            POLICY_RC.chmod(0o755)
            placed_policy = True
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:  # stale package lists: refresh once, then try again
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd)}: {exc}"
    finally:
        if placed_policy:
            POLICY_RC.unlink(missing_ok=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        return f"{' '.join(cmd)} exited {done.returncode}: " + " | ".join(tail)
    return None
