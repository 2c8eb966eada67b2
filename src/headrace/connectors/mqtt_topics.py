"""MQTT's rules for topic filters and its protocol limits, checked without paho.

Apart from the MQTT connector (:mod:`headrace.connectors.mqtt`) because the configuration
checks the filters of an ``mqtt`` source too, and checking a pipeline file must not need
the ``mqtt`` extra.
"""

from __future__ import annotations

# Largest Receive Maximum MQTT 5 can express.
MAX_RECEIVE_MAXIMUM = 65_535
# Largest Session Expiry Interval; the spec reads it as "never expires".
MAX_SESSION_EXPIRY_S = 0xFFFF_FFFF


def topic_filter_problem(topic_filter: str) -> str | None:
    """What makes ``topic_filter`` invalid (MQTT 5, section 4.7), or ``None``.

    Checked before connecting: paho raises on an invalid filter inside its network thread,
    where the error would otherwise stop the source without a word.

    >>> topic_filter_problem("plant/+/sensors/#") is None
    True
    >>> topic_filter_problem("$share/scorers/plant/#") is None
    True
    >>> topic_filter_problem("a/#/b")
    "'#' must be the last level, alone"
    """
    if not topic_filter:
        return "a topic filter cannot be empty"
    if len(topic_filter.encode("utf-8", "surrogatepass")) > 65_535:
        return "a topic filter is at most 65535 bytes"
    if "\0" in topic_filter:
        return "a topic filter cannot contain NUL"
    levels = topic_filter.split("/")
    if levels[0] == "$share":
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            return "a shared subscription is $share/<group>/<filter>, the group without + or #"
        levels = levels[2:]
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be the last level, alone"
        if "+" in level and level != "+":
            return "'+' must be a level alone"
    return None
