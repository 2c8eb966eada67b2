"""Feature lookups before scoring (``enrich:``): values from Redis or PostgreSQL, looked
up once per batch behind a TTL cache, merged into each event before its features.

* :mod:`~headrace.enrich.lookup`: :class:`Lookup`, :class:`Enricher` (cache, defaults,
  dead letters at stage ``enrich``, outages that pause reading);
* :mod:`~headrace.enrich.redis_store`: :class:`RedisStore` (the ``redis`` extra);
* :mod:`~headrace.enrich.postgres_store`: :class:`PostgresStore` (the ``postgres`` extra).

The stores are imported when first used: this package needs neither extra.
"""

from headrace.enrich.lookup import Enricher, Key, Lookup, LookupStore, LookupUnavailableError

__all__ = ["Enricher", "Key", "Lookup", "LookupStore", "LookupUnavailableError"]
