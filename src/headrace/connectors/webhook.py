"""The webhook sink: alerts POSTed to an HTTP endpoint, in batches, with a cooldown per key.

At-least-once, like every sink. An alert is accepted by :meth:`WebhookSink.write` into a
buffer; a POST carries up to ``max_records`` of them and goes when that many wait, when
the oldest has waited ``max_wait`` seconds, or at :meth:`~WebhookSink.flush` (before every
commit), so a position is committed only once its alert was answered with a 2xx or
dead-lettered. What each answer means:

* **2xx**: delivered.
* **5xx, 429, no answer within the timeout**: retried ``retries`` times with backoff (a
  ``Retry-After`` is honoured, up to ``retry_after_cap``); then every alert of the POST
  is dead-lettered (``output-retries-exhausted``) with the last answer.
* **any other status** (4xx, a redirect): dead-lettered at once (``output-rejected``) with
  the status and the start of the response body.
* **not reachable** (connection refused or cut, the name does not resolve, the connection
  is not made in time): the endpoint is down. The POST is tried again with backoff until
  it is reachable, however long that takes (:class:`~headrace.connectors.outage.Outage`:
  logged once, then at most every 30 s); meanwhile writes wait once the buffer is full, the
  flow bound pauses the source, and nothing is dropped.

Alerts refused later than their write go to the dead-letter sink through the engine
(:class:`~headrace.connectors.base.SinkContext`); an output the template cannot render is
refused by the write itself.

The URL and the header values may hold secrets: they appear in no log line, error
message or ``repr``, and are removed from response bodies quoted in dead letters.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from headrace.connectors.base import Sink, SinkContext
from headrace.connectors.outage import Outage
from headrace.connectors.webhook_templates import Renderer, TemplateError
from headrace.errors import ErrorType, HeadraceError, Stage, failure
from headrace.record import FailedRecord, Record, ScoredBatch

log = logging.getLogger("headrace")

#: How much of a response body a dead letter quotes.
SNIPPET_CHARS = 200
#: Cooldown entries are pruned of expired keys once there are this many.
_PRUNE_AT = 10_000


class WebhookError(HeadraceError, RuntimeError):
    """The webhook sink cannot send at all (not a single alert's fault)."""


class Unreachable(HeadraceError, ConnectionError):
    """The endpoint cannot be reached now (an outage, waited out)."""


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, Unreachable)


def _secrets(url: str, headers: Mapping[str, str]) -> list[str]:
    """What to take out of any text the sink quotes, longest first: the URL, its path and
    query (where Slack and others keep the secret), and each header value and the longer
    words of it (a token without its ``Bearer``)."""
    found = {url}
    parts = urlsplit(url)
    found.update(p for p in (parts.path, parts.query, parts.netloc) if len(p) >= 8)
    for key, value in headers.items():
        if key.lower() == "content-type":
            continue
        found.add(value)
        found.update(w for w in value.split() if len(w) >= 8)
    return sorted((f for f in found if f), key=len, reverse=True)


@dataclass(slots=True)
class _Alert:
    record: Record
    output: dict[str, Any]
    accepted: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None  # None: no answer in time
    text: str  # the status and the start of the body, or why there is no answer
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


class WebhookSink(Sink):
    """POSTs alerts to ``url`` (see the module's docstring for what each answer means).

    ``template``: ``"json"`` (a JSON array of the outputs, in the shape every sink
    writes), ``"slack"`` (``{"text": ...}``, one line per alert) or a Jinja template
    rendered per alert (joined by newlines). ``cooldown``: seconds in which a key alerts
    at most once; the alerts it holds back are counted (``suppressed``, and
    ``headrace_alerts_suppressed_total{sink}``) and count as written. The cooldown is
    kept in memory only: a restart forgets it.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        template: str = "json",
        max_records: int = 50,
        max_wait: float = 1.0,
        cooldown: float = 0.0,
        timeout: float = 5.0,
        retries: int = 5,
        name: str = "webhook",
        backoff_first: float = 0.1,
        backoff_cap: float = 5.0,
        retry_after_cap: float = 300.0,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.name = name
        self._url = url
        self._renderer = Renderer(template, sink=name)
        given = dict(headers or {})
        if not any(k.lower() == "content-type" for k in given):
            given["Content-Type"] = self._renderer.content_type
        self._headers = given
        self._secrets = _secrets(url, given)
        self.max_records = max_records
        self.max_wait = max_wait
        self.cooldown = cooldown
        self.timeout = timeout
        self.retries = retries
        self.backoff_first = backoff_first
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self._outage = Outage(f"webhook sink {name!r}", transient=_unreachable, cap=backoff_cap)
        self._session: aiohttp.ClientSession | None = None
        self._context: SinkContext | None = None
        self._pending: list[_Alert] = []
        self._lock = asyncio.Lock()  # one POST at a time: alerts go in the order written
        self._timer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._last: dict[Any, float] = {}  # cooldown: key -> when it last alerted
        self._suppressed_metric: Any = None
        #: Alerts held back by the cooldown; alerts answered with a 2xx; POSTs made.
        self.suppressed = 0
        self.delivered = 0
        self.posts = 0

    def __repr__(self) -> str:
        # The URL and header values may hold secrets: never show them.
        return f"WebhookSink(name={self.name!r}, template={self._renderer.name!r})"

    @property
    def down(self) -> bool:
        """Whether the sink is waiting for its endpoint to be reachable again."""
        return self._outage.down

    @property
    def pending(self) -> int:
        """Alerts accepted and not yet answered."""
        return len(self._pending)

    def bind(self, context: SinkContext) -> None:
        self._context = context
        self._suppressed_metric = context.metrics.alerts_suppressed.labels(self.name)

    async def open(self) -> None:
        if self._session is None:
            # No total: a connection not made in time must tell itself apart (the endpoint
            # is not reachable) from an answer that does not come (a failed attempt), and
            # with a total timer as long as the connect timer, which fires first is chance.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.timeout, sock_read=self.timeout
            )
            self._session = aiohttp.ClientSession(timeout=timeout)

    # -- accepting -----------------------------------------------------------------------

    async def write(self, batch: ScoredBatch) -> list[FailedRecord] | None:
        self._check()
        if not len(batch):
            return None
        now = time.monotonic()
        refused: list[FailedRecord] = []
        for record, output in zip(batch.records, batch.to_dicts(), strict=True):
            try:
                self._renderer.check(output)
            except TemplateError as exc:
                kind = ErrorType.MISSING_FIELD if exc.missing else ErrorType.OUTPUT_REJECTED
                refused.append(failure(record, Stage.OUTPUT, exc, kind))
                continue
            if self._cooled(record.key, now):
                continue
            self._pending.append(_Alert(record, output, now))
        if len(self._pending) >= self.max_records or (self._pending and self.max_wait <= 0):
            await self._send(everything=self.max_wait <= 0)
        if self._pending:
            self._arm_timer()
        return refused or None

    def _cooled(self, key: Any, now: float) -> bool:
        """Whether ``key`` alerted within the cooldown (and count it if so)."""
        if self.cooldown <= 0:
            return False
        k = key if isinstance(key, str | int | float | bytes | bool | None) else repr(key)
        last = self._last.get(k)
        if last is not None and now - last < self.cooldown:
            self.suppressed += 1
            if self._suppressed_metric is not None:
                self._suppressed_metric.inc()
            return True
        self._last[k] = now
        if len(self._last) >= _PRUNE_AT:
            self._last = {k: t for k, t in self._last.items() if now - t < self.cooldown}
        return False

    def _check(self) -> None:
        """Raise again what failed a send (and keep raising: the alerts it was about are
        neither delivered nor dead-lettered, so no later flush may let a commit pass)."""
        error = self._error
        if error is None:
            return
        if isinstance(error, HeadraceError):
            raise error
        raise WebhookError(f"webhook sink {self.name!r} failed: {error}") from error

    def _arm_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._when_due(), name=f"webhook-{self.name}")

    async def _when_due(self) -> None:
        """Send the buffer once its oldest alert has waited ``max_wait``."""
        try:
            while self._pending:
                due = self._pending[0].accepted + self.max_wait - time.monotonic()
                if due > 0:
                    await asyncio.sleep(due)
                    continue
                await self._send(everything=True)
        except Exception:
            pass  # kept in self._error by _send: the next write or flush raises it

    async def flush(self) -> None:
        """Send every alert accepted so far and wait for the answers (dead letters
        included)."""
        self._check()
        await self._send(everything=True)
        self._check()

    async def close(self) -> None:
        """Stop sending. Alerts still buffered were not flushed, so their positions were
        not committed: a restart reads them again."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.wait([timer])
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- sending -------------------------------------------------------------------------

    async def _send(self, *, everything: bool) -> None:
        async with self._lock:
            self._check()
            try:
                await self._send_locked(everything)
            except Exception as exc:
                self._error = self._error or exc
                raise

    async def _send_locked(self, everything: bool) -> None:
        while self._pending and (everything or len(self._pending) >= self.max_records):
            chunk = self._pending[: self.max_records]
            failed = await self._deliver(chunk)
            del self._pending[: len(chunk)]
            if failed:
                if self._context is None:
                    raise WebhookError(
                        f"webhook sink {self.name!r} has no pipeline to dead-letter "
                        f"through: {failed[0].error}"
                    )
                await self._context.set_aside(failed)

    async def _deliver(self, chunk: list[_Alert]) -> list[FailedRecord]:
        """POST ``chunk`` until it is answered for good: nothing if delivered, else one
        dead letter per alert."""
        body = self._renderer.body([a.output for a in chunk])
        attempts = 0
        while True:
            attempts += 1
            answer = await self._outage.run(lambda: self._post(body))
            if answer.ok:
                self.delivered += len(chunk)
                return []
            if not answer.retryable:
                why, kind = answer.text, ErrorType.OUTPUT_REJECTED
            elif attempts > self.retries:
                why = f"{answer.text}, after {attempts} attempts"
                kind = ErrorType.OUTPUT_RETRIES_EXHAUSTED
            else:
                backoff = min(self.backoff_cap, self.backoff_first * 2.0 ** min(attempts - 1, 32))
                wait = backoff if answer.retry_after is None else answer.retry_after
                await asyncio.sleep(wait)
                continue
            message = f"webhook sink {self.name!r}: {why}"
            return [
                failure(a.record, Stage.OUTPUT, message, kind, attempts=attempts) for a in chunk
            ]

    async def _post(self, body: bytes) -> _Answer:
        session = self._session
        if session is None:
            raise WebhookError(f"webhook sink {self.name!r} is not open")
        self.posts += 1
        try:
            async with session.post(
                self._url, data=body, headers=self._headers, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = self._retry_after(response.headers.get("Retry-After"))
                try:
                    start = await response.content.read(SNIPPET_CHARS * 4)
                except (aiohttp.ClientError, TimeoutError):
                    start = b""  # the status says enough
        except aiohttp.ConnectionTimeoutError as exc:
            raise Unreachable(self._say(exc)) from None
        except TimeoutError:
            return _Answer(None, f"no answer within {self.timeout * 1000:g} ms")
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(self._say(exc)) from None
        except aiohttp.ClientError as exc:
            raise WebhookError(f"webhook sink {self.name!r}: {self._say(exc)}") from None
        snippet = " ".join(self._scrub(start.decode("utf-8", "replace")).split())
        snippet = snippet[:SNIPPET_CHARS]
        return _Answer(status, f"HTTP {status}: {snippet!r}", retry_after)

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds from a ``Retry-After`` header (seconds, or an HTTP date)."""
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        if not math.isfinite(seconds):
            return None
        return min(self.retry_after_cap, max(0.0, seconds))

    def _say(self, exc: BaseException) -> str:
        """Why a request failed, in words that hold neither the URL nor a header."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"no connection within {self.timeout * 1000:g} ms"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "the server closed the connection before answering"
        errno = getattr(getattr(exc, "os_error", exc), "errno", None)
        if isinstance(errno, int) and errno > 0:
            doing = "cannot connect" if isinstance(exc, aiohttp.ClientConnectorError) else "lost"
            return f"{doing}: {os.strerror(errno)}"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return "cannot connect: the host name does not resolve"
        return self._scrub(type(exc).__name__)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
