"""Commit coordination: which source positions are done, and making them durable.

One :class:`Commits` per run owns the offset tracker, the positions committed so far, the
commit lock and what happens when partitions move between workers. Every commit, periodic,
final or on a rebalance, goes through :meth:`Commits.commit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from headrace.connectors.base import (
    AcknowledgingSink,
    CommitRefused,
    PartitionedSource,
    PartitionKey,
    Sink,
    Source,
)
from headrace.errors import HeadraceError
from headrace.observe.metrics import PipelineMetrics
from headrace.record import Record
from headrace.runtime.acks import Acknowledgements
from headrace.runtime.delivery import Delivery
from headrace.runtime.offsets import OffsetTracker
from headrace.runtime.order import Turn, WriteOrder
from headrace.runtime.settings import EngineSettings
from headrace.runtime.state import PipelineError, RunState
from headrace.runtime.uncommitted import Uncommitted
from headrace.windows.stage import WindowStage

log = logging.getLogger("headrace")


class CommitPointTimeout(HeadraceError, TimeoutError):
    """A windowed commit found no moment when every closed window was written."""


class Commits:
    """Commits positions once their records are finished and their outputs durable.

    ``sinks`` gives every sink a commit must flush first; ``windows`` is the window state
    of a windowed pipeline, committed with the positions it covers. ``forget`` is called
    with partitions that left this worker, for the other parts to drop them too.
    """

    def __init__(
        self,
        *,
        source: Source,
        delivery: Delivery,
        sinks: Callable[[], list[Sink]],
        order: WriteOrder,
        state: RunState,
        metrics: PipelineMetrics,
        windows: WindowStage | None,
        forget: Callable[[Sequence[PartitionKey]], None],
        settings: EngineSettings,
    ) -> None:
        self.source = source
        self.delivery = delivery
        self.sinks = sinks
        self.order = order
        self.state = state
        self.metrics = metrics
        self.windows = windows
        self._forget_elsewhere = forget
        self.commit_point_timeout = settings.commit_point_timeout
        self.shutdown_timeout = settings.shutdown_timeout
        self.revoke_timeout = settings.revoke_timeout
        self.commit_as_acknowledged = settings.commit_as_acknowledged
        # Decided when commits start (the sinks are known then): commit positions as
        # their outputs are acknowledged, without waiting, under a ceiling.
        self.eager = False
        self.uncommitted = Uncommitted(settings.max_uncommitted)
        self._revoking = False
        # Rebalance callbacks under way (restoring window state included): not ready.
        self.moving = 0
        self.tracker = OffsetTracker()
        self.committed: dict[PartitionKey, int] = {}
        self.finished = asyncio.Event()  # set whenever records finish
        # Closed while a windowed commit waits for a commit point: no records are taken
        # in and no windows closed until it has its snapshot.
        self.gate = asyncio.Event()
        self.gate.set()
        self._stop = asyncio.Event()
        self._periodic: asyncio.Task[None] | None = None
        self._stuck = False  # a commit under way at the stop timed out
        self._lock = asyncio.Lock()

    async def commit(self) -> None:
        """Commit what is finished, in these steps:

        1. A windowed pipeline commits at a commit point instead (:meth:`_commit_windowed`).
        2. Exactly-once: take a turn in the write order, so that every batch before has
           written and none after may write until the transaction holding these positions
           has committed.
        3. Under the commit lock (a slower, older commit must not land after a newer one),
           take the committable positions from the tracker.
        4. Deliver them (:meth:`_deliver`): sinks flushed, then positions committed.
        """
        if self.windows is not None:
            await self._commit_windowed(self.windows)
            return
        if not self.delivery.exactly_once:
            await self._commit_positions()
            return
        async with self.order.turn():
            await self._commit_positions()

    async def _commit_positions(self) -> None:
        async with self._lock:
            positions = self.tracker.committable()
            if positions:
                await self._deliver(positions)

    async def _deliver(self, positions: dict[PartitionKey, int]) -> None:
        # The delivery flushes sinks first: a position is committed only for outputs that
        # are durable. Marked only once done: an interrupted commit is retried.
        await self.delivery.commit(positions, self.sinks(), self.source)
        self.tracker.mark_committed(positions)
        self.committed.update(positions)
        self.uncommitted.confirmed(positions)
        self._count_uncommitted()

    # -- committing as outputs are acknowledged ------------------------------------------

    def _can_be_eager(self) -> bool:
        return (
            self.commit_as_acknowledged
            and not self.delivery.exactly_once
            and self.windows is None
            and isinstance(self.source, PartitionedSource)
            and all(isinstance(s, AcknowledgingSink) for s in self.sinks())
        )

    async def _eagerly(self, on_failure: Callable[[], None]) -> None:
        """Whenever records finished (their outputs acknowledged), hand the positions that
        moved to the source to commit without waiting. One that fails or is lost only
        leaves a partition where it was: the next one, or the final commit, covers it."""
        assert isinstance(self.source, PartitionedSource)
        source, tracker, stop = self.source, self.tracker, self._stop
        while not stop.is_set():
            await self.finished.wait()
            self.finished.clear()
            if stop.is_set():
                return
            try:
                for sink in self.sinks():
                    if isinstance(sink, AcknowledgingSink):
                        sink.check()
                positions = tracker.committable()
                if positions:
                    source.commit_soon(positions)
                    tracker.mark_committed(positions)
                    self.committed.update(positions)
            except Exception as exc:
                self.state.fail(exc)
                on_failure()
                return

    def positions_committed(
        self, positions: Mapping[PartitionKey, int], failed: Sequence[PartitionKey]
    ) -> None:
        """The broker confirmed commits, or some failed (the source calls this on the
        event loop): a failed one is sent again with the next."""
        self.uncommitted.confirmed(positions)
        self._count_uncommitted()
        if failed:
            self.tracker.unmark(failed)
            self.finished.set()
        self.state.wake()

    def records_read_back(self, count: int) -> None:
        self.metrics.records_read_back.inc(count)

    async def make_room(self, pieces: Sequence[Sequence[Record]], acks: Acknowledgements) -> None:
        """Hold the records of ``pieces`` (about to be written) until they fit under
        ``max_uncommitted``, then count them against it."""
        n = sum(len(p) for p in pieces)
        await self.room_for(n, acknowledging=lambda: acks.pending > 0)
        for records in pieces:
            self.uncommitted.written(records)
        self._count_uncommitted()

    def _count_uncommitted(self) -> None:
        self.metrics.uncommitted.set(self.uncommitted.count())

    async def room_for(self, n: int, *, acknowledging: Callable[[], bool]) -> None:
        """Return once ``n`` more records may be written without going over
        ``max_uncommitted``, or once waiting cannot make room: no output is awaiting its
        acknowledgement (``acknowledging()``) and every position that may be committed
        was confirmed. Then the records holding positions back are in this batch or
        behind it (a lower priority's batch, overtaken), and it goes. At once too when
        not committing eagerly, while partitions are revoked and while stopping (the
        confirmations come from polls not made then)."""
        uncommitted, state, tracker = self.uncommitted, self.state, self.tracker
        if not self.eager or uncommitted.room(n):
            return

        def go() -> bool:
            if uncommitted.room(n) or self._revoking or state.stopping:
                return True
            return not acknowledging() and not uncommitted.behind(tracker.positions())

        timeout = self.revoke_timeout
        try:
            await state.until(go, timeout)
        except TimeoutError:
            raise PipelineError(
                f"no commit was confirmed for {timeout}s with max_uncommitted="
                f"{uncommitted.limit} records written and not committed; stopping"
            ) from None

    def start_periodic(self, interval: float, *, on_failure: Callable[[], None]) -> None:
        """Commit every ``interval`` seconds from now on; with 0, as soon as anything
        finished (one commit at a time: what finishes during a commit goes into the next).
        A failed commit fails the run, and ``on_failure`` is called (to stop it)."""
        self._stop.clear()
        self.eager = self._can_be_eager()
        loop = self._eagerly(on_failure) if self.eager else self._every(interval, on_failure)
        self._periodic = asyncio.create_task(loop)

    async def _every(self, interval: float, on_failure: Callable[[], None]) -> None:
        stop = self._stop
        while not stop.is_set():
            if interval > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stop.wait()
            else:
                await self.finished.wait()
                self.finished.clear()
            if stop.is_set():
                return
            try:
                await self.commit()
            except (CommitPointTimeout, CommitRefused) as exc:
                log.warning("%s; committing later", exc)
            except Exception as exc:
                self.state.fail(exc)
                on_failure()
                return

    async def stop_periodic(self) -> None:
        """Let a periodic commit in progress finish, for up to ``shutdown_timeout``; the
        final commit follows. One still waiting then (a sink whose service is away) is
        cancelled and the run fails: what it was committing stays uncommitted, and is
        read again after a restart (a transaction cut off is rolled back whole: its
        outputs and positions go together)."""
        self._stop.set()
        self.finished.set()
        periodic = self._periodic
        if periodic is None:
            return
        timeout = self.shutdown_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(periodic)
        except TimeoutError:
            periodic.cancel()
            with contextlib.suppress(BaseException):
                await periodic
            log.error(
                "a commit under way did not finish within shutdown_timeout=%ss; positions "
                "stay where they were (a restart reads the rest again)",
                timeout,
            )
            self.state.fail(PipelineError("a commit under way at the stop timed out"))
            self._stuck = True  # the final commit would wait on the same sink: skipped
        except Exception as exc:
            self.state.fail(exc)

    async def final(self) -> None:
        """The last commit of a run, bounded by ``shutdown_timeout``: a sink that is down
        (and waits for its service) must not keep a stopping worker alive."""
        timeout = self.shutdown_timeout
        if self._stuck:
            log.error("final commit not tried: the commit before it did not finish")
            return
        if self.eager:
            # Every position again, and waited for: a commit sent without waiting may
            # have failed or be unanswered.
            self.tracker.unmark_committed()
        try:
            async with asyncio.timeout(timeout):
                await self.commit()
        except TimeoutError:
            log.error(
                "final commit did not finish within shutdown_timeout=%ss; positions stay "
                "where they were (a restart reads the rest again)",
                timeout,
            )
            self.state.fail(PipelineError("the final commit timed out"))
        except CommitRefused as exc:
            # Stopping while the group rebalances: the partitions' next owners read what
            # was not committed again (at least once), nothing is lost.
            log.warning("final commit not made: %s", exc)
        except Exception as exc:
            log.error("final commit failed, positions stay where they were: %s", exc)
            self.state.fail(exc)

    async def _commit_windowed(
        self, windows: WindowStage, *, hand_back: bool = False, revoking: bool = False
    ) -> dict[PartitionKey, int]:
        """Commit window state, outputs and positions at a commit point: a moment when
        every closed window's output and every rejected record is written, so all three
        describe the same prefix of the input.

        Reading stops while the commit waits for that moment (no record comes in, no
        window closes), then resumes as soon as the state's changes are taken. With
        ``hand_back`` the positions are returned for the source to commit itself (during a
        rebalance) instead of committed here. A commit that is the last before a stop or
        a revocation (``revoking``) waits ``shutdown_timeout`` for its commit point, within
        the revocation's own deadline; the others ``commit_point_timeout``, and are tried
        again later."""
        tracker, state = self.tracker, self.state
        # A rebalance callback holds the poll thread, which a periodic commit holding the
        # lock may be waiting for (a source commit runs there): taking the lock here could
        # deadlock. Without it, the two snapshots follow each other, and so do their
        # changelog writes; the older commit's positions for the revoked partitions are
        # no longer assigned when it lands, so the source leaves them out.
        lock = contextlib.nullcontext() if hand_back else self._lock

        def quiet() -> bool:
            return windows.pending == 0 and tracker.in_flight() == 0

        async with lock:
            turn: Turn | None = None
            self.gate.clear()
            try:
                final = state.stopping or not state.running or hand_back or revoking
                timeout = self.shutdown_timeout if final else self.commit_point_timeout
                try:
                    async with asyncio.timeout(timeout):
                        while not quiet():  # again after waking: another task may have run
                            await state.until(quiet, timeout)
                except TimeoutError:
                    raise CommitPointTimeout(
                        f"no commit point within {timeout}s: {windows.pending} closed windows "
                        f"and {tracker.in_flight()} rejected records still being written"
                    ) from None
                positions = tracker.positions()
                changes = windows.changes(positions)
                if self.delivery.exactly_once:
                    # Nothing written after this snapshot may join its transaction.
                    turn = self.order.turn()
            finally:
                self.gate.set()
            async with turn or contextlib.nullcontext():
                self.metrics.changelog_records.inc(windows.write(changes))
                await windows.flush()  # state before the positions it covers
                if hand_back:
                    for sink in self.sinks():
                        await sink.flush()
                    return positions
                # The snapshot's positions, not the tracker's current ones: records read
                # since are in no state written yet.
                committed = {k: v for k, v in positions.items() if self.committed.get(k) != v}
                if committed or self.delivery.exactly_once:
                    await self._deliver(committed)
                return committed

    # -- partitions moving between workers -----------------------------------------------

    async def partitions_assigned(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int] | None:
        """Where new partitions start: the delivery's stored positions, else the window
        state's (restored before the partitions' first record), else the source's."""
        self.moving += 1
        try:
            starts = await self.delivery.start_positions(partitions)
            if self.windows is not None:
                restored = await self.windows.restore(partitions)
                self.metrics.state_restore_seconds.set(self.windows.restore_seconds)
                if restored:
                    starts = {**(starts or {}), **restored}
            return starts
        finally:
            self.moving -= 1

    async def partitions_revoked(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int]:
        """Finish the revoked partitions' records in flight, then hand back their
        positions to commit. Past ``revoke_timeout`` the pipeline stops instead, and those
        records are not committed: the next owner reads them again."""
        state = self.state
        if state.fatal is not None or not state.running:
            # Nothing more will finish: give the partitions up without committing them.
            self.forget(partitions)
            return {}
        self._revoking = True  # no batch waits for commit confirmations meanwhile
        self.moving += 1
        state.wake()
        try:
            return await self._finish_revoked(partitions)
        finally:
            self._revoking = False
            self.moving -= 1

    async def _finish_revoked(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int]:
        """Wait for the revoked partitions' records to finish, then make their outputs
        durable and take their positions; all of it within one ``revoke_timeout``. The
        consumer is held in its rebalance callback meanwhile: a sink that waits for its
        service (a database down) must not hold it past what the group waits for."""
        timeout = self.revoke_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            await self.state.until(lambda: self.tracker.unfinished(partitions) == 0, timeout)
        except TimeoutError:
            raise PipelineError(
                f"records of revoked partitions were not finished within revoke_timeout="
                f"{timeout}s; stopping without committing them"
            ) from None
        try:
            async with asyncio.timeout_at(deadline):
                positions = await self._hand_over(partitions)
        except TimeoutError:
            raise PipelineError(
                f"the outputs of revoked partitions were not made durable within "
                f"revoke_timeout={timeout}s (a sink waiting for its service?); stopping "
                "without committing them: their next owner reads them again"
            ) from None
        self.forget(partitions)
        self.committed.update(positions)
        return positions

    async def _hand_over(self, partitions: Sequence[PartitionKey]) -> dict[PartitionKey, int]:
        """Make the finished outputs of ``partitions`` durable; the positions the source
        commits in its rebalance callback (none where a transaction took them)."""
        positions: dict[PartitionKey, int] = {}
        exactly_once = self.delivery.exactly_once
        if self.windows is not None:
            # The state of the revoked partitions goes to the changelog with their offsets.
            try:
                handed = await self._commit_windowed(
                    self.windows, hand_back=not exactly_once, revoking=True
                )
            except CommitPointTimeout as exc:
                raise PipelineError(f"revoking {partitions}: {exc}") from None
            if not exactly_once:
                positions = {k: handed[k] for k in partitions if k in handed}
        elif exactly_once:
            await self.commit()  # the transaction takes the revoked partitions' offsets
        else:
            # The source commits these itself, in its rebalance callback: a commit sent
            # through the usual path would wait for the rebalance to end.
            for sink in self.sinks():
                await sink.flush()
            current = self.tracker.positions()
            positions = {k: current[k] for k in partitions if k in current}
        return positions

    def forget(self, partitions: Sequence[PartitionKey]) -> None:
        self.delivery.release(partitions)
        self.uncommitted.forget(partitions)
        self._count_uncommitted()
        if self.windows is not None:
            self.windows.revoke(partitions)
        for key in partitions:
            self.tracker.forget(*key)
        self._forget_elsewhere(partitions)
