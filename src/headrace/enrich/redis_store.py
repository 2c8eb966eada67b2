"""A lookup store in Redis (the ``redis`` extra): one round trip per batch, either one
``MGET`` of string keys holding JSON objects (``kind="json"``) or a pipeline of ``HMGET``
(with ``fields``) or ``HGETALL`` (without) of hashes (``kind="hash"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from headrace.connectors.extras import MissingExtraError
from headrace.enrich.lookup import Key
from headrace.errors import ErrorType, RecordError, json_kind

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:
    raise MissingExtraError("Redis lookup", "redis", "redis", name="redis") from exc

_decode = msgspec.json.Decoder().decode


def hash_value(raw: bytes) -> Any:
    """A hash field's value: a JSON number becomes a number, anything else stays text.

    >>> hash_value(b"41"), hash_value(b"2.5"), hash_value(b"gold"), hash_value(b"true")
    (41, 2.5, 'gold', 'true')
    """
    try:
        value = _decode(raw)
    except msgspec.DecodeError:
        return raw.decode("utf-8", "replace")
    if value.__class__ is int or value.__class__ is float:
        return value
    return raw.decode("utf-8", "replace")


class RedisStore:
    """Values of ``key_prefix + str(key)`` in the Redis at ``url`` (never printed: it may
    hold a password). Outages (refused, lost connections, a server loading its data) are
    the lookup's to wait out: the client itself does not retry."""

    what = "Redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "",
        kind: Literal["json", "hash"] = "json",
        fields: Sequence[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.key_prefix = key_prefix
        self.kind = kind
        self.fields = list(fields) if fields is not None else None
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def __repr__(self) -> str:
        return f"RedisStore(key_prefix={self.key_prefix!r}, kind={self.kind!r})"

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError)

    async def fetch(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any] | RecordError]:
        prefix = self.key_prefix
        names = [f"{prefix}{k}" for k in keys]
        if self.kind == "json":
            return self._json(keys, await self._client.mget(names))
        fields = self.fields
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                if fields is None:
                    pipe.hgetall(name)
                else:
                    pipe.hmget(name, fields)
            replies = await pipe.execute()
        out: dict[Key, dict[str, Any] | RecordError] = {}
        for k, reply in zip(keys, replies, strict=True):
            if fields is None:
                if reply:  # HGETALL of a missing key answers an empty hash
                    out[k] = {f.decode(): hash_value(v) for f, v in reply.items()}
            else:
                # HMGET cannot tell a missing key from a hash without these fields: both
                # count as missing.
                value = {
                    f: hash_value(v) for f, v in zip(fields, reply, strict=True) if v is not None
                }
                if value:
                    out[k] = value
        return out

    def _json(
        self, keys: Sequence[Key], raws: list[Any]
    ) -> dict[Key, dict[str, Any] | RecordError]:
        out: dict[Key, dict[str, Any] | RecordError] = {}
        prefix = self.key_prefix
        for k, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                value = _decode(raw)
            except msgspec.DecodeError as exc:
                out[k] = RecordError(
                    f"Redis key {prefix}{k!s} holds no JSON document: {exc}", ErrorType.INVALID_JSON
                )
                continue
            if not isinstance(value, dict):
                out[k] = RecordError(
                    f"Redis key {prefix}{k!s} holds {json_kind(value)}, not a JSON object",
                    ErrorType.NOT_AN_OBJECT,
                )
                continue
            out[k] = value
        return out

    async def reset(self) -> None:
        await self._client.connection_pool.disconnect()

    async def close(self) -> None:
        await self._client.aclose()
