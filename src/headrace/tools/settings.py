"""librdkafka settings given on a command line (``-X key=value``), and keeping their
secrets out of what the tools print.

Settings pass through to librdkafka untouched (it parses its own strings), so every
client option works without the tools knowing it. Because an operator pastes credentials
this way, any value whose key looks secret is masked wherever the tools echo settings, and
removed from error messages that might quote it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from headrace.errors import HeadraceError

SECRET_MARKERS = ("password", "secret", "sasl")
MASK = "***"


def is_secret(key: str) -> bool:
    """Whether a setting's value must never be shown.

    >>> is_secret("sasl.username"), is_secret("ssl.key.password"), is_secret("linger.ms")
    (True, True, False)
    """
    k = key.lower()
    return any(marker in k for marker in SECRET_MARKERS)


class SettingError(HeadraceError, ValueError):
    """A ``-X`` item that is not ``key=value``. The message never contains a secret."""


def parse_settings(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``: split at the first ``=``.

    >>> parse_settings(["linger.ms=20", "sasl.password=a=b"])
    {'linger.ms': '20', 'sasl.password': 'a=b'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = "<hidden>" if is_secret(item) else repr(item)
            raise SettingError(f"expected key=value, got {shown}")
        out[key] = value
    return out


def masked(settings: Mapping[str, object]) -> dict[str, str]:
    """The settings as strings, with secret values replaced by ``***``.

    >>> masked({"sasl.password": "hunter2", "acks": "all"})
    {'sasl.password': '***', 'acks': 'all'}
    """
    return {k: MASK if is_secret(k) else str(v) for k, v in settings.items()}


def describe(settings: Mapping[str, object]) -> str:
    """``key=value`` pairs for a log line, secrets masked."""
    return " ".join(f"{k}={v}" for k, v in masked(settings).items())


def redact(text: str, settings: Mapping[str, object]) -> str:
    """``text`` with every secret value from ``settings`` replaced by ``***`` (librdkafka
    quotes a bad value in its error, e.g. ``Invalid value "..." for property``).

    >>> redact('bad value "hunter2"', {"sasl.password": "hunter2"})
    'bad value "***"'
    """
    for key, value in settings.items():
        secret = str(value)
        if is_secret(key) and secret:
            text = text.replace(secret, MASK)
    return text


class RedactingLogger:
    """A ``logger`` for confluent-kafka clients that removes secret values.

    Without one, librdkafka writes its log lines straight to file descriptor 2, and some
    quote configuration values (``sasl.mechanism set to `...```). Given this object as the
    client's ``logger`` setting, every line goes through :func:`redact` and then to the
    ``logging`` logger ``name`` (WARNING and above reach stderr even when logging is not
    configured).
    """

    def __init__(self, settings: Mapping[str, object], name: str = "headrace.kafka") -> None:
        import logging

        self._settings = dict(settings)
        self._logger = logging.getLogger(name)

    def log(self, level: int, msg: str, *args: object) -> None:
        """The method confluent-kafka calls, with a ``%``-format and its arguments."""
        if not self._logger.isEnabledFor(level):
            return
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = " ".join([msg, *map(str, args)])
        self._logger.log(level, "%s", redact(text, self._settings))
