"""Kafka's rule for a consumer's ``group.instance.id`` (static membership, KIP-345),
checked without confluent-kafka.

Apart from the Kafka connector (:mod:`headrace.connectors.kafka`) because the configuration
checks a Kafka source's instance id too, and checking a pipeline file must not need the
``kafka`` extra.
"""

from __future__ import annotations

import re

#: The longest ``group.instance.id`` Kafka accepts.
MAX_INSTANCE_ID = 249
#: Kafka's rule, said once for every message that refuses an id.
INSTANCE_ID_RULE = f"a group.instance.id is 1 to {MAX_INSTANCE_ID} of A-Z a-z 0-9 . _ -"

_REFUSED = re.compile(r"[^A-Za-z0-9._-]")


def instance_id_problem(instance_id: str) -> str | None:
    """What makes ``instance_id`` invalid as a ``group.instance.id``, or ``None``.

    Kafka's rule (``JoinGroupRequest.validateGroupInstanceId``, that of topic names): not
    empty, not ``.`` or ``..``, at most 249 characters of ``[A-Za-z0-9._-]``. Checked
    before connecting, so that a mistake is found when the file is read, not at the join.

    >>> instance_id_problem("scorer-0.eu_1") is None
    True
    >>> instance_id_problem("scorer 0")
    "has characters Kafka refuses: ' '"
    """
    if not instance_id:
        return "is empty"
    if instance_id in (".", ".."):
        return "cannot be '.' or '..'"
    if len(instance_id) > MAX_INSTANCE_ID:
        return f"is {len(instance_id)} characters long, over {MAX_INSTANCE_ID}"
    refused = sorted(set(_REFUSED.findall(instance_id)))
    if refused:
        return "has characters Kafka refuses: " + ", ".join(repr(c) for c in refused)
    return None
