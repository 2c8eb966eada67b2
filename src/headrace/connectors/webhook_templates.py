"""What a webhook sink posts: the body of one POST for a list of alerts (outputs, in the
shape every sink writes), by a named template (``json``, ``slack``) or a Jinja template
of the user's, rendered in jinja2's sandbox with undefined names an error.

The configuration checks a template with :func:`template_problem` before anything runs:
its syntax, and that the top-level names it uses are fields of an output.

>>> render = Renderer("slack", sink="alerts")
>>> out = {"key": "pump-1", "prediction": 0.97, "model": {"name": "m", "version": "2"},
...        "source": {"topic": "t", "partition": 0, "offset": 5}, "event_time": 0.0}
>>> render.body([out])
b'{"text":"alerts: pump-1 scored 0.97 (model m version 2, t[0]@5, 1970-01-01T00:00:00Z)"}'
>>> Renderer("{{ key }} is at {{ prediction }}", sink="alerts").body([out, out])
b'pump-1 is at 0.97\\npump-1 is at 0.97'
>>> template_problem("{{ key }} {{ predicton }}")
"unknown field 'predicton'; a template may use: count, event_time, features, input, key, \
model, prediction, processed_at, sink, source, window"
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec

from headrace.errors import HeadraceError

NAMED = ("json", "slack")

#: The fields of an event's output, and of a window's (``headrace.record``), and the
#: sink's name.
EVENT_FIELDS = frozenset(
    {"key", "input", "prediction", "model", "source", "event_time", "processed_at"}
)
WINDOW_FIELDS = frozenset(
    {
        "key",
        "window",
        "count",
        "features",
        "prediction",
        "model",
        "source",
        "event_time",
        "processed_at",
    }
)
FIELDS = EVENT_FIELDS | WINDOW_FIELDS | {"sink"}


class TemplateError(HeadraceError, ValueError):
    """A template cannot render one output (a field it names is missing, or an expression
    fails on its values). ``missing`` names the field when that is why."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def is_template(text: str) -> bool:
    """Whether ``text`` is meant as a Jinja template rather than a template's name."""
    return "{{" in text or "{%" in text


def template_fields(text: str) -> set[str]:
    """The top-level names a template uses (raises ``jinja2.TemplateSyntaxError``)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_environment().parse(text)))


def template_problem(template: str) -> str | None:
    """What is wrong with the ``template`` setting, or ``None``."""
    if template in NAMED:
        return None
    if not is_template(template):
        return (
            f"unknown template {template!r}; expected one of: {', '.join(NAMED)}, or a Jinja "
            "template using {{ field }}"
        )
    from jinja2 import TemplateSyntaxError

    try:
        names = template_fields(template)
    except TemplateSyntaxError as exc:
        return f"not a valid template: {exc.message} (line {exc.lineno})"
    unknown = sorted(names - FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r}; a template may use: {', '.join(sorted(FIELDS))}"
    return None


def _when(seconds: Any) -> str:
    try:
        t = dt.datetime.fromtimestamp(float(seconds), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(seconds)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def slack_line(sink: str, out: dict[str, Any]) -> str:
    """One alert as a line of text."""
    model = out.get("model") or {}
    src = out.get("source") or {}
    if "window" in out:
        w = out["window"]
        where = f"window {_when(w['start'])} to {_when(w['end'])}, {out.get('count')} events"
    else:
        where = f"{src.get('topic')}[{src.get('partition')}]@{src.get('offset')}"
    return (
        f"{sink}: {out.get('key')} scored {out.get('prediction')} (model {model.get('name')} "
        f"version {model.get('version')}, {where}, {_when(out.get('event_time'))})"
    )


class Renderer:
    """Bodies of POSTs for one sink: ``json`` (a JSON array of the outputs), ``slack``
    (``{"text": ...}``, a line per alert) or a Jinja template rendered per alert (the
    renderings joined by newlines)."""

    def __init__(self, template: str, *, sink: str) -> None:
        problem = template_problem(template)
        if problem is not None:
            raise ValueError(f"sink {sink!r}: template: {problem}")
        self.name = template if template in NAMED else "template"
        self.sink = sink
        self._encode = msgspec.json.Encoder().encode
        self._template = None if template in NAMED else _environment().from_string(template)

    @property
    def content_type(self) -> str:
        if self._template is None:
            return "application/json"
        return "text/plain; charset=utf-8"

    def check(self, out: dict[str, Any]) -> None:
        """Raise :class:`TemplateError` if this output cannot be rendered."""
        if self._template is not None:
            self._render_one(out)

    def _render_one(self, out: dict[str, Any]) -> str:
        from jinja2 import TemplateError as JinjaError
        from jinja2 import UndefinedError

        assert self._template is not None
        try:
            return str(self._template.render(out, sink=self.sink))
        except UndefinedError as exc:
            raise TemplateError(
                f"sink {self.sink!r}: the template names a field this output lacks: {exc.message}",
                missing=True,
            ) from None
        except (JinjaError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(
                f"sink {self.sink!r}: the template failed on this output: {exc}", missing=False
            ) from None

    def body(self, outputs: Sequence[dict[str, Any]]) -> bytes:
        """One POST's body for these alerts."""
        if self.name == "json":
            return self._encode(list(outputs))
        if self.name == "slack":
            text = "\n".join(slack_line(self.sink, o) for o in outputs)
            return self._encode({"text": text})
        return "\n".join(self._render_one(o) for o in outputs).encode()
