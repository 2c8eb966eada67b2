"""Every default of a pipeline's tuning, written once.

The YAML schema, the Python builder and the runtime's settings classes all read their
defaults from here, so that a pipeline configured in YAML and one built in code behave
alike when neither says otherwise. Times are in seconds (the YAML keys ending in ``_ms``
convert). This module imports nothing of Headrace: anything may import it.
"""

from __future__ import annotations

from typing import Literal

NAME = "pipeline"

# Batching: a batch fires at MAX_BATCH_SIZE records or MAX_WAIT after its oldest record;
# MAX_CONCURRENCY batches compute at once.
MAX_BATCH_SIZE = 256
MAX_WAIT = 0.01
MAX_CONCURRENCY = 2
# Where a model that is not a coroutine is called: "thread" (an inference thread; a call
# that hangs costs a thread, not the worker) or "loop" (on the event loop, for models
# that hold the GIL anyway). Measured (bench/engine_overhead.py, 2026-12-06, 2-core EPYC):
# in process, the light model made 743,000 records/s at batches of 256 on a thread and
# 1,420,000 on the loop. The thread stays the default: it is what keeps a worker whose
# model hangs alive (and lets a timeout isolate the record).
MODEL_CALLS: Literal["thread", "loop", "process"] = "thread"

# Flow control: reading pauses at either bound, and resumes below RESUME_AT of both.
MAX_IN_FLIGHT = 10_000
MAX_IN_FLIGHT_BYTES: int | None = 64 << 20
RESUME_AT = 0.5

# Commits and stopping.
COMMIT_INTERVAL = 1.0
# At-least-once into Kafka: positions are committed as their outputs are acknowledged, and
# at most MAX_UNCOMMITTED records may be written and not yet committed (what a crash can
# write twice). Measured (bench/crash_cost.py, 2026-12-06, 2 cores shared with the broker,
# the light model at 66-79k records/s): write to confirmed commit takes about 11 ms p50,
# 28 ms p90, so a ceiling of 1024 cost 16-17% of the throughput, 2048 8-9%, 4096 at most 2%
# (1.03x and 0.98x the interval commits in two runs).
COMMIT_AS_ACKNOWLEDGED = True
MAX_UNCOMMITTED: int | None = 4096
# After a crash, a worker assigned a partition reads back the last READ_BACK records of
# each output partition and passes over what was written there and not committed (every
# output in Kafka topics, at-least-once). A worker's uncommitted writes are at most
# MAX_UNCOMMITTED in all, spread over the output partitions.
READ_BACK = 4096
SHUTDOWN_TIMEOUT = 30.0
REVOKE_TIMEOUT = 60.0
# Windowed pipelines: how often time alone may close windows, and how long a periodic
# commit waits for a commit point before trying again later.
WINDOW_TICK = 0.25
COMMIT_POINT_TIMEOUT = 10.0

# Model failures: retries, backoff (doubling up to the maximum), threads written off.
RETRIES = 2
BACKOFF = 0.01
MAX_BACKOFF = 5.0
MAX_HUNG_CALLS = 32

# Live model updates: how often the alias is checked, and the probation after a swap.
POLL_INTERVAL = 10.0
PROBATION_SECONDS = 60.0
PROBATION_MAX_ERROR_RATE = 0.05
PROBATION_MAX_LATENCY_RATIO = 3.0
PROBATION_MIN_RECORDS = 100

# A shadow version: predictions this close agree; batches it may hold; its call timeout.
SHADOW_TOLERANCE = 1e-6
SHADOW_MAX_BATCHES_IN_FLIGHT = 1
SHADOW_TIMEOUT = 30.0

# The metrics server.
METRICS_HOST = "127.0.0.1"
METRICS_PORT = 9108

# Lookups before the features (`enrich`): the cache in front of a store, a call's timeout.
ENRICH_CACHE_TTL = 60.0
ENRICH_CACHE_MAX = 100_000
ENRICH_TIMEOUT = 5.0
