"""Live model updates: which version serves, how a new one takes over, and how it is
taken back.

The manager watches a :class:`ModelSource` (a registry alias). When the alias points at
a new version it loads and validates it in a background thread while the current version
keeps serving, then swaps it in *between batches*: the engine asks for the serving model
once per batch, so a batch is scored by one version, and batches already running finish
on the version they started with. A version that fails to load or validate never serves.

After a swap the new version is on probation: if, within ``probation_s``, more than
``max_error_rate`` of its records fail or its time per record (its first batch, which pays
for warm-up, left out) exceeds ``max_latency_ratio`` times the old one's, the manager
swaps back, moves the alias back, and never takes that version again in this run. During
probation the records the new version fails on are scored again by the old one instead
of being dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import time as wall_clock
from typing import Any, Protocol

from headrace import defaults
from headrace.errors import HeadraceError
from headrace.models.base import Model, model_label, model_ref
from headrace.observe.metrics import PipelineMetrics

log = logging.getLogger("headrace")


class ModelSource(Protocol):
    """Where model versions come from (the local registry, MLflow)."""

    def describe(self) -> str:
        """The reference, for logs (``registry:NAME@ALIAS``)."""

    def latest(self) -> str:
        """The version the reference points at now. May block (file or network I/O)."""

    def load(self, version: str) -> Model:
        """Load (after checking its sha256) and validate one version; raises if it must
        not serve. May block."""

    def roll_back(self, bad_version: str, to: str | None = None) -> None:
        """Move the reference off ``bad_version``, if it still points there: to ``to``
        (the version that was serving before it), else one step back. May block."""


@dataclass(frozen=True)
class ModelEvent:
    """One change of the serving version (or a version refused), for the dashboard."""

    at: float
    outcome: str  # serving (at start), swapped, rejected, rolled_back
    version: str
    detail: str = ""


class NothingToRollBack(HeadraceError):
    """An operator's rollback found no earlier version to go back to (the message says
    why)."""


@dataclass(frozen=True)
class Probation:
    """How long a new version is watched after a swap, and what sends it back."""

    seconds: float = defaults.PROBATION_SECONDS
    max_error_rate: float = defaults.PROBATION_MAX_ERROR_RATE
    max_latency_ratio: float = defaults.PROBATION_MAX_LATENCY_RATIO
    min_records: int = defaults.PROBATION_MIN_RECORDS

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"probation seconds must not be negative, got {self.seconds}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.max_latency_ratio <= 0:
            raise ValueError(f"max_latency_ratio must be positive, got {self.max_latency_ratio}")


class _Usage:
    """Outcomes of one version: records scored and failed, and time per record (over the
    ``timed`` records: a version on probation leaves its first batch out)."""

    __slots__ = ("batches", "failed", "ok", "seconds", "timed")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.batches = 0
        self.timed = 0
        self.seconds = 0.0

    @property
    def records(self) -> int:
        return self.ok + self.failed

    @property
    def error_rate(self) -> float:
        return self.failed / self.records if self.records else 0.0

    @property
    def seconds_per_record(self) -> float:
        return self.seconds / self.timed if self.timed else 0.0


class ModelManager:
    """Keeps the serving model current. See the module docstring."""

    def __init__(
        self,
        source: ModelSource,
        *,
        poll_interval: float = defaults.POLL_INTERVAL,
        probation: Probation | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.source = source
        self.poll_interval = poll_interval
        self.probation = probation or Probation()
        self.metrics = metrics or PipelineMetrics()
        self.serving: Model | None = None
        self.previous: Model | None = None
        self.rejected: set[str] = set()
        self.on_swap: Callable[[Model, Model | None], None] = lambda _new, _old: None
        # A further check a new version must pass before it serves, raising if it fails
        # (the engine's, under model_calls: process: that it can be sent to a process).
        self.accept: Callable[[Model], None] = lambda _model: None
        # Whether the serving version is what the model-info gauge shows: not for a
        # canary or shadow candidate (the Rollout turns it off for those).
        self.reports_info = True
        self._probation_until = 0.0
        self._usage: dict[int, _Usage] = {}
        self._leases: dict[int, int] = {}
        self._retired: dict[int, Model] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.events: deque[ModelEvent] = deque(maxlen=20)

    # -- starting and watching -------------------------------------------------------------

    async def start(self) -> Model:
        """Load the version the reference points at now; it must load and validate."""
        version = await asyncio.to_thread(self.source.latest)
        model = await asyncio.to_thread(self.source.load, version)
        self._set_serving(model, previous=None, probation=False)
        self._event("serving", model_label(model))
        log.info("model %s: serving %s", self.source.describe(), model_label(model))
        return model

    async def watch(self) -> None:
        """Check for a new version every ``poll_interval`` or when :meth:`check_now` is
        called, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.check()
            except Exception as exc:  # a registry hiccup must not stop the pipeline
                log.warning("model %s: checking for updates failed: %s", self.source, exc)

    def check_now(self) -> None:
        """Look for a new version now (the admin call)."""
        self._wake.set()

    async def check(self, *, outcome: str = "swapped") -> bool:
        """Swap in the version the reference points at, if it is new and valid. Returns
        whether a swap happened; ``outcome`` is what the swap counts as (an operator's
        rollback swaps in an older version)."""
        async with self._lock:
            self._end_probation_if_due()
            version = await asyncio.to_thread(self.source.latest)
            current = self.serving
            if current is not None and version == model_ref(current).version:
                return False
            if version in self.rejected:
                return False
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(self.source.load, version)
                self.accept(model)
            except Exception as exc:
                self.rejected.add(version)
                self.metrics.model_updates.labels("rejected").inc()
                self._event("rejected", version, str(exc))
                log.error(
                    "model %s: version %s rejected, %s keeps serving: %s",
                    self.source.describe(),
                    version,
                    model_label(current) if current is not None else "nothing",
                    exc,
                )
                return False
            self._set_serving(model, previous=current, probation=True)
            self.metrics.model_updates.labels(outcome).inc()
            self._event(outcome, model_label(model))
            log.warning(
                "model %s: now serving %s (was %s; loaded and validated in %.2fs), on "
                "probation for %gs",
                self.source.describe(),
                model_label(model),
                model_label(current) if current is not None else "nothing",
                time.perf_counter() - started,
                self.probation.seconds,
            )
            return True

    # -- what the engine calls -----------------------------------------------------------

    def lease(self, model: Model | None = None) -> Model:
        """The model to score the next batch with (or ``model``, a version to fall back
        on); :meth:`release` it when written. A leased version is not closed."""
        model = self.serving if model is None else model
        assert model is not None, "start() first"
        key = id(model)
        self._leases[key] = self._leases.get(key, 0) + 1
        return model

    def release(self, model: Model) -> None:
        key = id(model)
        left = self._leases.get(key, 1) - 1
        if left:
            self._leases[key] = left
            return
        self._leases.pop(key, None)
        retired = self._retired.pop(key, None)
        if retired is not None:
            _close(retired)
            log.info(
                "model %s: released %s (drained)", self.source.describe(), model_label(retired)
            )

    def on_probation(self, model: Model) -> bool:
        """Whether ``model`` is a new version still on probation."""
        return (
            self.previous is not None
            and model is self.serving
            and time.monotonic() < self._probation_until
        )

    def fallback(self, model: Model) -> Model | None:
        """The version to rescore ``model``'s failed records with: the previous one while
        ``model`` is on probation (or was just rolled back)."""
        if model is self.serving and self.on_probation(model):
            return self.previous
        if model is not self.serving and model is not self.previous and self.serving is not None:
            return self.serving  # rolled back meanwhile: the old version serves again
        return None

    def observe(self, model: Model, *, ok: int, failed: int, seconds: float) -> None:
        """Outcomes of one batch; may roll a version on probation back."""
        self._end_probation_if_due()  # not only at the next poll: free the old version
        usage = self._usage.setdefault(id(model), _Usage())
        usage.ok += ok
        usage.failed += failed
        probation = self.on_probation(model)
        # A new version's first batch pays for its warm-up (ONNX Runtime allocates its
        # buffers on the first run): in a CI run, 7.5x the old version's time per record
        # over the first 100 records, and a rollback of a version as fast as the old one.
        if usage.batches or not probation:
            usage.timed += ok + failed
            usage.seconds += seconds
        usage.batches += 1
        if not probation:
            return
        p = self.probation
        if usage.records < p.min_records and usage.failed < p.min_records:
            return
        reason = None
        if usage.error_rate > p.max_error_rate:
            reason = (
                f"{usage.failed} of {usage.records} records failed "
                f"({usage.error_rate:.1%} > {p.max_error_rate:.1%})"
            )
        else:
            old = self._usage.get(id(self.previous)) if self.previous is not None else None
            if old is not None and old.timed and usage.timed >= p.min_records:
                ratio = usage.seconds_per_record / max(old.seconds_per_record, 1e-9)
                if ratio > p.max_latency_ratio:
                    reason = (
                        f"time per record {ratio:.1f}x the previous version's "
                        f"(> {p.max_latency_ratio:g}x)"
                    )
        if reason is not None:
            self.roll_back(reason)

    def roll_back(self, reason: str) -> None:
        """Swap the previous version back in and move the reference back."""
        bad, good = self.serving, self.previous
        if bad is None or good is None:
            return
        version = model_ref(bad).version
        self.rejected.add(version)
        self._set_serving(good, previous=None, probation=False, retire=bad)
        self.metrics.model_updates.labels("rolled_back").inc()
        self._event("rolled_back", model_label(good), reason)
        log.error(
            "model %s: rolled back from %s to %s: %s",
            self.source.describe(),
            model_label(bad),
            model_label(good),
            reason,
        )
        # Back to the version that served, never merely the one before on the alias's
        # history: that may be one that failed to load or validate, and never served.
        task = asyncio.get_running_loop().run_in_executor(
            None, self.source.roll_back, version, model_ref(good).version
        )
        task.add_done_callback(self._rolled_back)

    async def roll_back_now(self, reason: str) -> str:
        """An operator's rollback; returns the version serving after it.

        A version on probation goes back to the one it replaced (:meth:`roll_back`).
        Otherwise the reference is moved back on the registry (the alias's history) and
        the version it then names is swapped in; the one rolled back from is never taken
        again in this run. Raises :class:`NothingToRollBack` when there is no earlier
        version (a pinned reference, or an alias with no history)."""
        current = self.serving
        if current is None:
            raise NothingToRollBack("no model is serving yet")
        if self.previous is not None:
            self.roll_back(reason)
            assert self.serving is not None
            return model_label(self.serving)
        version = model_ref(current).version
        await asyncio.to_thread(self.source.roll_back, version, None)
        if await asyncio.to_thread(self.source.latest) == version:
            raise NothingToRollBack(
                f"{self.source.describe()} names no earlier version to go back to (a pinned "
                "version, or an alias with no history)"
            )
        self.rejected.add(version)
        await self.check(outcome="rolled_back")
        assert self.serving is not None
        return model_label(self.serving)

    def _event(self, outcome: str, version: str, detail: str = "") -> None:
        self.events.append(
            ModelEvent(at=wall_clock(), outcome=outcome, version=version, detail=detail)
        )

    def _rolled_back(self, future: asyncio.Future[None]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("model %s: moving the reference back failed: %s", self.source, exc)

    # -- internals -----------------------------------------------------------------------

    def _set_serving(
        self,
        model: Model,
        *,
        previous: Model | None,
        probation: bool,
        retire: Model | None = None,
    ) -> None:
        old_previous = self.previous
        self.serving = model
        self.previous = previous if probation else None
        self._probation_until = time.monotonic() + self.probation.seconds if probation else 0
        self._usage[id(model)] = _Usage()
        # Whatever no longer serves and is not kept to fall back on is retired: closed
        # now, or by the last batch still using it.
        gone: list[Model] = []
        for candidate in (retire, old_previous, previous):
            if candidate is None or candidate is model or candidate is self.previous:
                continue
            if all(candidate is not g for g in gone):
                gone.append(candidate)
        for g in gone:
            self._retire(g)
        if self.reports_info:
            ref = model_ref(model)
            self.metrics.model_info.clear()
            self.metrics.model_info.labels(ref.name, ref.version, ref.sha256 or "").set(1)
        self.on_swap(model, previous)

    def _retire(self, model: Model) -> None:
        self._usage.pop(id(model), None)
        if self._leases.get(id(model)):
            self._retired[id(model)] = model  # closed by the last release()
        else:
            _close(model)

    def _end_probation_if_due(self) -> None:
        if self.previous is not None and time.monotonic() >= self._probation_until:
            passed, old = self.serving, self.previous
            self.previous = None
            self._retire(old)
            if passed is not None:
                log.info(
                    "model %s: %s passed probation", self.source.describe(), model_label(passed)
                )


def _close(model: Any) -> None:
    close = getattr(model, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
