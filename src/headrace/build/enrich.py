"""Lookups from the ``enrich`` section: each a :class:`~headrace.enrich.lookup.Lookup` on
its store (the store modules, which need the ``redis`` or ``postgres`` extra, are imported
only for a pipeline that uses them)."""

from __future__ import annotations

from headrace import config as cfg
from headrace.enrich.lookup import Lookup, LookupStore


def build_lookup(c: cfg.LookupConfig) -> Lookup:
    timeout = c.timeout_ms / 1000.0
    store: LookupStore
    if isinstance(c, cfg.RedisLookupConfig):
        from headrace.enrich.redis_store import RedisStore

        store = RedisStore(
            c.url, key_prefix=c.key_prefix, kind=c.kind, fields=c.fields, timeout=timeout
        )
    else:
        from headrace.enrich.postgres_store import PostgresStore

        store = PostgresStore(c.dsn, table=c.table, key_column=c.key_column, fields=c.fields)
    cache = c.cache
    return Lookup(
        name=c.name,
        store=store,
        key_field=c.key_field,
        into=c.into,
        fields=c.fields,
        default=c.default,
        cache_ttl=cache.ttl_s if cache is not None else None,
        cache_max=cache.max_entries if cache is not None else 1,
        timeout=timeout,
    )


def build_lookups(config: cfg.PipelineConfig) -> list[Lookup]:
    """The lookups, in the order the file lists them."""
    return [build_lookup(c) for c in config.enrich]
