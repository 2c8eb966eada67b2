"""``headrace run --workers N``: N worker processes in one consumer group, supervised.

Each worker is a ``headrace run`` of the same file, with ``HEADRACE_WORKER`` set to its
index, which gives it a stable instance id of its own, ``<id>-<index>`` (static
membership: a worker restarted within the session gets its partitions back). The id is
the source's ``instance_id`` (or ``HEADRACE_INSTANCE_ID``); without one,
``<hostname>-<supervisor pid>``: two supervisors on one machine must not share ids (a
member joining with an id in use fences the one holding it). The
supervisor restarts a worker that dies, with backoff, and gives up (stopping the others,
exit 1) when one keeps dying; it forwards SIGTERM and SIGINT for a graceful stop of all
(a second signal kills them); and it serves the group's dashboard and ``/api/status``
(the workers' own, merged: :mod:`headrace.observe.group`), one ``/metrics`` (the workers'
scrapes merged with a ``worker`` label), and one progress line. Across machines the
same file runs as it is: Kafka's consumer group is what coordinates the workers.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from headrace.config.instance import INSTANCE_ID_ENV, WORKER_ENV

log = logging.getLogger("headrace")

#: A worker that dies this many times within RESTART_WINDOW seconds is not restarted
#: again: the supervisor stops the others and exits 1.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Backoff before a restart: doubling from FIRST_BACKOFF up to MAX_BACKOFF, back to the
#: first once a worker ran for RESTART_WINDOW.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0


def worker_count(value: str) -> int:
    """``--workers``: a number of processes, or ``auto`` for one per core."""
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers {value!r}: give a number of processes (1 or more) or auto")
    return n


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Restarts:
    """When one worker died, and how long to wait before starting it again.

    >>> r = Restarts()
    >>> [r.died(at=t) for t in (0.0, 1.0, 2.0)]
    [0.5, 1.0, 2.0]
    >>> r.gave_up(at=2.0), Restarts(deaths=[0.0] * 5).gave_up(at=1.0)
    (False, True)
    """

    deaths: list[float] = field(default_factory=list)
    backoff: float = FIRST_BACKOFF

    def died(self, *, at: float) -> float:
        """Note a death; the seconds to wait before the restart."""
        if self.deaths and at - self.deaths[-1] > RESTART_WINDOW:
            self.backoff = FIRST_BACKOFF  # it had run well for a while
        self.deaths.append(at)
        wait, self.backoff = self.backoff, min(self.backoff * 2, MAX_BACKOFF)
        return wait

    def gave_up(self, *, at: float) -> bool:
        return sum(1 for t in self.deaths if at - t <= RESTART_WINDOW) >= MAX_RESTARTS


def merged(scrapes: Iterable[tuple[int, str]]) -> Iterator[Metric]:
    """The workers' metric families as one set, each sample labelled with its worker.

    >>> text = "# TYPE x_total counter\\nx_total 3.0\\n"
    >>> [(s.name, s.labels, s.value) for m in merged([(0, text), (1, text)]) for s in m.samples]
    [('x_total', {'worker': '0'}, 3.0), ('x_total', {'worker': '1'}, 3.0)]
    """
    families: dict[str, Metric] = {}
    for worker, text in scrapes:
        for family in text_string_to_metric_families(text):
            into = families.get(family.name)
            if into is None:
                into = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for s in family.samples:
                into.add_sample(s.name, {**s.labels, "worker": str(worker)}, s.value, s.timestamp)
    return iter(families.values())


class _Group(Collector):
    """Scrapes every running worker when ``/metrics`` is asked for."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        return merged(self.supervisor.scrape())


@dataclass
class _Worker:
    index: int
    port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: Restarts = field(default_factory=Restarts)
    start_at: float = 0.0  # when a restart is due


class Supervisor:
    """Runs ``n`` workers of ``config`` until they end or a signal stops them."""

    def __init__(
        self,
        config: Path,
        n: int,
        *,
        args: Sequence[str] = (),
        metrics: tuple[str, int] | None = None,
        progress: bool = True,
        base_id: str | None = None,
    ) -> None:
        """``base_id``: the instance id the workers' ids start with, where the file and
        the environment give none."""
        self.config = config
        self.base_id = base_id
        self.args = list(args)
        self.metrics = metrics
        self.progress = progress
        self.workers = [_Worker(index=i, port=free_port()) for i in range(n)]
        self.stopping = False
        self.failed: str | None = None
        self._signals = 0

    # -- the group ------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, supervise them; the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_stacks)
        if self.metrics is not None:
            self._serve_metrics(*self.metrics)
        for w in self.workers:
            self._start(w)
        log.warning(
            "supervising %d workers of %s (pids %s)",
            len(self.workers),
            self.config,
            ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None),
        )
        codes: dict[int, int] = {}
        shown = time.monotonic()
        while len(codes) < len(self.workers):
            time.sleep(0.1)
            now = time.monotonic()
            for w in self.workers:
                if w.index in codes:
                    continue
                if w.proc is None:
                    if not self.stopping and now >= w.start_at:
                        self._start(w)
                    elif self.stopping:
                        codes[w.index] = 0
                    continue
                code = w.proc.poll()
                if code is None:
                    continue
                if self.stopping or code == 0:
                    codes[w.index] = code
                else:
                    self._died(w, code, now)
            if self.progress and now - shown >= 1.0:
                shown = now
                self._show()
        if self.progress:
            sys.stderr.write("\n")
        if self.failed is not None:
            sys.stderr.write(f"workers stopped: {self.failed}\n")
            return 1
        return 0 if all(c == 0 for c in codes.values()) else 1

    def _start(self, w: _Worker) -> None:
        env = {**os.environ, WORKER_ENV: str(w.index)}
        if self.base_id is not None:
            env[INSTANCE_ID_ENV] = self.base_id
        cmd = [sys.executable, "-m", "headrace.cli", "run", str(self.config), "--no-progress"]
        cmd += ["--metrics-port", str(w.port), *self.args]
        # Ignored until the worker registers its own handler (an ignored signal stays
        # ignored across exec): SIGUSR1's default action would end a worker still starting.
        handler = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            w.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        finally:
            signal.signal(signal.SIGUSR1, handler)

    def _died(self, w: _Worker, code: int, now: float) -> None:
        w.proc = None
        wait = w.restarts.died(at=now)
        if w.restarts.gave_up(at=now):
            self.failed = (
                f"worker {w.index} exited {MAX_RESTARTS} times within {RESTART_WINDOW:.0f}s "
                f"(last exit code {code}); stopping the others"
            )
            self.stop()
            return
        w.start_at = now + wait
        log.warning("worker %d exited with %d; restarting it in %.1fs", w.index, code, wait)

    def stop(self) -> None:
        """A graceful stop of every worker."""
        self.stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop()
            return
        for w in self.workers:  # a second signal: at once (still safe: nothing committed)
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()

    def _on_stacks(self, signum: int, frame: Any) -> None:
        """SIGUSR1: this process's threads' stacks on stderr, and every worker's (each
        worker prints its own)."""
        faulthandler.dump_traceback(all_threads=True)
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGUSR1)

    # -- what the group shows ---------------------------------------------------------------

    def scrape(self) -> list[tuple[int, str]]:
        """Every running worker's metrics, as text (a worker not answering is left out)."""
        out: list[tuple[int, str]] = []
        for w in self.workers:
            if w.proc is None or w.proc.poll() is not None:
                continue
            try:
                url = f"http://127.0.0.1:{w.port}/metrics"
                with urllib.request.urlopen(url, timeout=0.5) as reply:
                    out.append((w.index, reply.read().decode()))
            except OSError:
                continue
        return out

    def statuses(self) -> list[tuple[int, dict[str, Any]]]:
        """Every running worker's ``/api/status`` (a worker not answering is left out)."""
        out: list[tuple[int, dict[str, Any]]] = []
        for w in self.workers:
            if w.proc is None or w.proc.poll() is not None:
                continue
            try:
                url = f"http://127.0.0.1:{w.port}/api/status"
                with urllib.request.urlopen(url, timeout=0.5) as reply:
                    out.append((w.index, json.loads(reply.read())))
            except (OSError, ValueError):
                continue
        return out

    def _serve_metrics(self, host: str, port: int) -> None:
        """The group's HTTP server (its dashboard, merged /metrics and /api/status), on an
        event loop of its own in a thread: the supervisor itself is not asynchronous.
        Raises :class:`MetricsPortError` when it cannot listen."""
        from headrace.observe.group import GroupOperations
        from headrace.observe.http import MetricsServer

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Group(self))
        ops = GroupOperations(
            self.statuses, expected=len(self.workers), running=lambda: not self.stopping
        )
        server = MetricsServer(registry, host=host, port=port, ops=ops)
        started: queue.Queue[BaseException | None] = queue.Queue()

        def serve() -> None:
            async def main() -> None:
                try:
                    await server.start()
                except BaseException as exc:
                    started.put(exc)
                    return
                started.put(None)
                await asyncio.Event().wait()  # until the process ends (a daemon thread)

            asyncio.run(main())

        threading.Thread(target=serve, name="headrace-group-http", daemon=True).start()
        failed = started.get()
        if failed is not None:
            raise failed
        # The same startup line as a single worker's, for the group's page.
        sys.stderr.write(f"dashboard: {server.url}  metrics: {server.url}metrics\n")

    def _show(self) -> None:
        out = 0.0
        for family in merged(self.scrape()):
            if family.name == "headrace_records_out":
                out += sum(s.value for s in family.samples if s.name.endswith("_total"))
        running = sum(1 for w in self.workers if w.proc is not None and w.proc.poll() is None)
        line = f"{running}/{len(self.workers)} workers  {out:>12,.0f} scored"
        sys.stderr.write(f"\r{line}")
        sys.stderr.flush()
