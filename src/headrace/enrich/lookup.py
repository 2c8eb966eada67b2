"""Feature lookups before scoring: values from a store, merged into each event of a batch.

A :class:`Lookup` reads one field of each event (its key), asks its cache and then its
:class:`LookupStore` for the keys of a whole batch in **one round trip**, and merges what it
found into the events. The merge is flat: a stored ``{"age": 41}`` looked up ``into``
``profile`` becomes the event's field ``"profile.age"``, which the featurizer names as
is (``features: {fields: [profile.age]}``). A key the store does not hold gets the
lookup's ``default`` (merged the same way), or its record is set aside at stage
``enrich`` with error type ``lookup-missing``.

A store that is away (refused or lost connections, a call past ``timeout``) is waited out
like a model that is down: the batch waits, :class:`Enricher` pauses reading with the
reason ``enrich-down`` meanwhile, nothing is dead-lettered, and the batch goes on when the
store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TTLCache

from headrace import defaults
from headrace.connectors.outage import Outage
from headrace.errors import ErrorType, HeadraceError, RecordError, Stage, failure, json_kind
from headrace.observe.metrics import PipelineMetrics
from headrace.record import FailedRecord, Record

log = logging.getLogger("headrace")

#: What an event's key field may hold: a string or an integer (not a boolean).
Key = str | int


class LookupStore(Protocol):
    """Where a lookup's values live: one call fetches many keys."""

    #: How the logs name it (never a URL or DSN: they may hold a password).
    what: str

    async def fetch(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any] | RecordError]:
        """The values of the keys the store holds (absent keys are left out), in one round
        trip; a stored value that is no object is a :class:`RecordError` for its key."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means "not reachable now" (waited out), not a mistake."""
        ...

    async def reset(self) -> None:
        """Forget a connection that failed: the next call opens a new one."""
        ...

    async def close(self) -> None:
        """For good, at the end of the run."""
        ...


class LookupUnavailableError(HeadraceError, RuntimeError):
    """The pipeline was stopped while a lookup's store was away: the batches waiting for
    it were not scored, and their records were not committed."""


# What the cache holds for a key the store does not have (negative results are cached).
_ABSENT: Any = object()


@dataclass(frozen=True, kw_only=True)
class Lookup:
    """One lookup: ``key_field`` of each event is looked up in ``store``, what is found is
    merged into the event as ``INTO.FIELD`` (``into`` defaults to ``name``).

    ``fields``: merge only these of a stored value (``None``: all). ``default``: the value
    for a key the store does not hold (``None``: such a record is a dead letter).
    ``cache_ttl``/``cache_max``: a TTL cache in front of the store, holding what was
    found and what was not (``cache_ttl=None``: no cache). ``timeout``: a store call that
    takes longer counts as the store being away.
    """

    name: str
    store: LookupStore
    key_field: str
    into: str | None = None
    fields: Sequence[str] | None = None
    default: Mapping[str, Any] | None = None
    cache_ttl: float | None = defaults.ENRICH_CACHE_TTL
    cache_max: int = defaults.ENRICH_CACHE_MAX
    timeout: float = defaults.ENRICH_TIMEOUT

    def __post_init__(self) -> None:
        if self.cache_ttl is not None and self.cache_ttl <= 0:
            raise ValueError(f"cache_ttl must be positive, got {self.cache_ttl}")
        if self.cache_max < 1:
            raise ValueError(f"cache_max must be at least 1, got {self.cache_max}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.default is not None and self.fields is not None:
            extra = sorted(set(self.default) - set(self.fields))
            if extra:
                raise ValueError(f"default field {extra[0]!r} is not one of fields")


class _Running:
    """A lookup at run time: its cache, its store's outage, its metrics."""

    def __init__(
        self,
        lookup: Lookup,
        metrics: PipelineMetrics,
        on_down: Callable[[str, bool], None],
    ) -> None:
        self.lookup = lookup
        self.name = name = lookup.name
        self.prefix = f"{lookup.into or name}."
        self.fields = None if lookup.fields is None else frozenset(lookup.fields)
        self.default = None if lookup.default is None else self._flat(lookup.default)
        self.cache: TTLCache[Key, Any] | None = (
            None
            if lookup.cache_ttl is None
            else TTLCache(maxsize=lookup.cache_max, ttl=lookup.cache_ttl)
        )
        self.seconds = metrics.enrich_seconds.labels(name)
        self.hits = metrics.enrich_cache.labels(name, "hit")
        self.misses = metrics.enrich_cache.labels(name, "miss")
        self.outage = Outage(
            f"lookup {name!r} ({lookup.store.what})",
            transient=self._transient,
            on_down=lambda down: on_down(name, down),
        )
        self.stopping = False
        # One round trip at a time per lookup: a store connection serves one call.
        self._lock = asyncio.Lock()

    def _flat(self, value: Mapping[str, Any]) -> dict[str, Any]:
        prefix, fields = self.prefix, self.fields
        return {prefix + k: v for k, v in value.items() if fields is None or k in fields}

    def _transient(self, exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError) or self.lookup.store.transient(exc)

    async def _fetch(self, keys: list[Key]) -> dict[Key, dict[str, Any] | RecordError]:
        if self.stopping:
            raise LookupUnavailableError(
                f"stopped while lookup {self.name!r} waited for its store; the records "
                "waiting for it were not committed and will be read again"
            )
        store = self.lookup.store
        started = time.perf_counter()
        async with asyncio.timeout(self.lookup.timeout):
            found = await store.fetch(keys)
        self.seconds.observe(time.perf_counter() - started)
        return found

    async def _fetch_retrying(self, keys: list[Key]) -> dict[Key, dict[str, Any] | RecordError]:
        """One round trip, again after each transient failure until the store answers."""
        return await self.outage.run(lambda: self._fetch(keys), reset=self.lookup.store.reset)

    async def apply(self, records: list[Record], failed: list[FailedRecord]) -> list[Record]:
        """Merge the lookup into ``records``; those that cannot be enriched go to
        ``failed``; the others are returned, in order."""
        field = self.lookup.key_field
        try:
            keys: list[Any] = [r.value[field] for r in records]
            distinct = set(keys)
        except (KeyError, TypeError, IndexError):
            return await self._apply_slow(records, failed)
        # Checked per distinct key, not per record.
        if any(k.__class__ is not str and k.__class__ is not int for k in distinct):
            return await self._apply_slow(records, failed)
        found = await self._values(distinct)
        if all(v.__class__ is dict for v in found.values()):
            # Every key resolved: one dict update per record. A cached lookup of a
            # 256-record batch with 100 distinct keys costs 0.5-0.75 µs a record in all,
            # about what featurizing 3 fields costs (`python -m bench.enrich_lookup`,
            # 2-core EPYC shared with other work, 2026-12-05).
            for r, k in zip(records, keys, strict=True):
                r.value.update(found[k])
            return records
        return self._merge(records, keys, found, failed)

    async def _apply_slow(self, records: list[Record], failed: list[FailedRecord]) -> list[Record]:
        """Some record has no usable key: say which, and enrich the rest."""
        field, ok, keys = self.lookup.key_field, [], []
        for r in records:
            value = r.value
            if not isinstance(value, dict):
                why = RecordError(
                    f"lookup {self.name!r} needs field {field!r} of a JSON object, got "
                    f"{json_kind(value)}",
                    ErrorType.NOT_AN_OBJECT,
                )
            elif field not in value:
                why = RecordError(
                    f"lookup {self.name!r}: missing key field {field!r}", ErrorType.MISSING_FIELD
                )
            elif not isinstance(value[field], str | int) or isinstance(value[field], bool):
                why = RecordError(
                    f"lookup {self.name!r}: key field {field!r} must be a string or an "
                    f"integer, got {json_kind(value[field])}",
                    ErrorType.WRONG_TYPE,
                )
            else:
                ok.append(r)
                keys.append(value[field])
                continue
            failed.append(failure(r, Stage.ENRICH, why, why.error_type))
        if not ok:
            return ok
        found = await self._values(set(keys))
        return self._merge(ok, keys, found, failed)

    def _merge(
        self,
        records: list[Record],
        keys: list[Key],
        found: dict[Key, Any],
        failed: list[FailedRecord],
    ) -> list[Record]:
        out: list[Record] = []
        for r, k in zip(records, keys, strict=True):
            v = found[k]
            if v.__class__ is dict:
                r.value.update(v)
                out.append(r)
            elif v is _ABSENT:
                failed.append(
                    failure(
                        r,
                        Stage.ENRICH,
                        f"lookup {self.name!r}: key {k!r} not found in "
                        f"{self.lookup.store.what}, and the lookup has no default",
                        ErrorType.LOOKUP_MISSING,
                    )
                )
            else:
                failed.append(failure(r, Stage.ENRICH, v, v.error_type))
        return out

    async def _values(self, keys: set[Key]) -> dict[Key, Any]:
        """Each key's flat value to merge (the default for an absent key, if there is
        one), ``_ABSENT``, or the :class:`RecordError` of a stored value that is unusable."""
        cache = self.cache
        found: dict[Key, Any] = {}
        if cache is None:
            missing = list(keys)
        else:
            # `cache[k]` in a try costs 0.4 µs a key where `cache.get(k)` costs 1.2-1.4 µs
            # (`python -m bench.enrich_lookup`, 2026-12-05): per distinct key of every
            # batch, `get` was most of a cached lookup's time. A miss raises, then waits
            # for a round trip anyway.
            missing = []
            for k in keys:
                try:
                    found[k] = cache[k]
                except KeyError:
                    missing.append(k)
        if missing:
            lock = self._lock
            waited = lock.locked()
            async with lock:
                if waited and cache is not None:
                    # Another batch fetched while this one waited: take what it cached.
                    still = []
                    for k in missing:
                        try:
                            found[k] = cache[k]
                        except KeyError:
                            still.append(k)
                    missing = still
                if missing:
                    fetched = await self._fetch_retrying(missing)
                    for k in missing:
                        v = fetched.get(k, _ABSENT)
                        if v.__class__ is dict:
                            v = self._flat(v)
                        found[k] = v
                        if cache is not None:
                            cache[k] = v
        if cache is not None:
            # A hit: served by the cache; a miss: fetched from the store.
            if len(found) > len(missing):
                self.hits.inc(len(found) - len(missing))
            if missing:
                self.misses.inc(len(missing))
        default = self.default
        if default is not None:
            for k, v in found.items():
                if v is _ABSENT:
                    found[k] = default
        return found


class Enricher:
    """The lookups of a pipeline, applied in order to each batch before its features (a
    later lookup may key on a field an earlier one merged). ``on_down(True)`` when the
    first store becomes unreachable, ``on_down(False)`` when none is any longer."""

    def __init__(
        self,
        lookups: Sequence[Lookup],
        metrics: PipelineMetrics,
        on_down: Callable[[bool], None] = lambda _down: None,
    ) -> None:
        self.on_down = on_down
        self._down: set[str] = set()
        self.lookups = [_Running(lk, metrics, self._changed) for lk in lookups]

    def _changed(self, name: str, down: bool) -> None:
        was = bool(self._down)
        if down:
            self._down.add(name)
        else:
            self._down.discard(name)
        if bool(self._down) != was:
            self.on_down(not was)

    @property
    def down(self) -> bool:
        """Whether a lookup is waiting for its store."""
        return bool(self._down)

    async def enrich(self, records: list[Record], failed: list[FailedRecord]) -> list[Record]:
        """The records of a batch that every lookup enriched; the others go to ``failed``."""
        for lookup in self.lookups:
            if not records:
                break
            records = await lookup.apply(records, failed)
        return records

    def stop(self) -> None:
        """Batches waiting for a store that is away give up at their next attempt (and
        are not committed)."""
        for lookup in self.lookups:
            lookup.stopping = True

    async def close(self) -> None:
        for lookup in self.lookups:
            try:
                await lookup.lookup.store.close()
            except Exception as exc:  # the store is away: nothing is pending on it
                log.warning("lookup %r: closing its store failed: %s", lookup.name, exc)
