"""``headrace loadgen``, ``headrace audit`` and ``headrace dead-letters replay``: the
tools as commands.

:func:`register` adds them to a Typer app. The Kafka client (and, for tables, psycopg) is
imported only when a command runs, so ``headrace --help`` and the other commands work
without the ``kafka`` and ``postgres`` extras installed.

Exit codes: 0 success; 1 the run failed (loadgen: records not delivered or broker
unreachable; audit: ``--expect`` did not hold); 2 a usage error, naming the option; 3
(audit, replay) the input or outputs could not be read. ``dead-letters replay`` exits 1
when a record was not delivered or a partition was not read to its end. ``-X`` values
whose key contains ``password``, ``secret`` or ``sasl`` are never printed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from headrace.tools.settings import SettingError, describe, parse_settings

if TYPE_CHECKING:
    from headrace.tools.audit import AuditReport
    from headrace.tools.loadgen import LoadgenSummary
    from headrace.tools.replay import ReplaySummary

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3


class Expect(StrEnum):
    """The guarantee ``headrace audit --expect`` checks."""

    exactly_once = "exactly-once"
    at_least_once = "at-least-once"


Bootstrap = Annotated[
    str, typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers, HOST:PORT[,...].")
]
Settings = Annotated[
    list[str] | None,
    typer.Option(
        "-X",
        "--set",
        help="A librdkafka setting, key=value (repeatable). Secret values are never printed.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Also print the result as JSON on stdout.")]


def _settings(items: list[str] | None) -> dict[str, str]:
    try:
        return parse_settings(items or [])
    except SettingError as exc:
        raise typer.BadParameter(str(exc), param_hint="'-X'") from None


def _needs(extra: str, exc: ImportError) -> typer.Exit:
    Console(stderr=True).print(
        f"[red]this command needs the {extra!r} extra[/red]: "
        f"pip install 'headrace[{extra}]' ({exc.name} is missing)",
        highlight=False,
    )
    return typer.Exit(EXIT_USAGE)


def _print_json(value: Any) -> None:
    typer.echo(msgspec.json.encode(value).decode())


def loadgen(
    bootstrap: Bootstrap,
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to produce to.")],
    rate: Annotated[
        float, typer.Option(min=0.0, help="Events per second; 0 produces as fast as possible.")
    ] = 1000.0,
    count: Annotated[
        int | None, typer.Option(min=0, help="Stop after this many events.", show_default=False)
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Stop after this long; at a --rate, after exactly rate * seconds events.",
            show_default=False,
        ),
    ] = None,
    malformed: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of records replaced by malformed bytes."),
    ] = 0.0,
    oversize_bytes: Annotated[
        int | None,
        typer.Option(min=1, help="Add oversize records of this many bytes to the malformed kinds."),
    ] = None,
    entities: Annotated[int, typer.Option(min=1, help="Distinct entity ids (keys).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the event generator.")] = 0,
    start_id: Annotated[int, typer.Option(min=0, help="The first event id.")] = 0,
    settings: Settings = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr (default: when stderr is a terminal).",
            show_default=False,
        ),
    ] = None,
    json: Json = False,
) -> None:
    """Produce reference sensor events to a Kafka topic, keyed by entity_id, ids unique
    and increasing. Without --count or --seconds it runs until Ctrl-C."""
    if count is not None and seconds is not None:
        raise typer.BadParameter(
            "give --count or --seconds, not both", param_hint="'--count' / '--seconds'"
        )
    if seconds is not None and seconds <= 0:
        raise typer.BadParameter("must be positive", param_hint="'--seconds'")
    config = _settings(settings)
    try:
        from headrace.tools.loadgen import LoadgenError, produce_events, settings_line
    except ImportError as exc:
        raise _needs("kafka", exc) from None
    err = Console(stderr=True, soft_wrap=True)
    err.print(f"producing to {topic} with {settings_line(bootstrap, config)}", highlight=False)
    try:
        summary = produce_events(
            bootstrap,
            topic,
            rate=rate,
            count=count,
            seconds=seconds,
            malformed=malformed,
            oversize_bytes=oversize_bytes,
            entities=entities,
            seed=seed,
            start_id=start_id,
            config=config,
            progress=progress,
            console=err,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'-X'") from None
    except LoadgenError as exc:
        err.print(Text.assemble(("loadgen failed ", "red"), str(exc)))
        raise typer.Exit(EXIT_FAILED) from None
    _report_loadgen(err, summary)
    if json:
        _print_json(summary)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def _report_loadgen(err: Console, s: LoadgenSummary) -> None:
    kinds = ", ".join(f"{k} {v:,}" for k, v in s.malformed_by_kind.items())
    err.print(
        f"produced {s.count:,} records (ids {s.first_id:,}..{s.next_id - 1:,}) to {s.topic} "
        f"in {s.elapsed:.2f} s, {s.rate:,.0f} rec/s; malformed {s.malformed:,}"
        + (f" ({kinds})" if kinds else "")
        + (" — interrupted" if s.interrupted else ""),
        highlight=False,
    )
    if s.failed:
        err.print(f"[red]{s.failed:,} records not delivered[/red]", highlight=False)
    for e in s.errors:
        err.print(f"  {e}", highlight=False, markup=False)


def audit(
    bootstrap: Bootstrap,
    input_topic: Annotated[str, typer.Option("--input", "-i", help="The input topic.")],
    output_topic: Annotated[
        str | None,
        typer.Option(help="A topic of Headrace outputs (JSON with 'source').", show_default=False),
    ] = None,
    output_table: Annotated[
        str | None,
        typer.Option(
            help='A PostgreSQL table with topic, partition, "offset" columns (needs --dsn).',
            show_default=False,
        ),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL connection string for tables (never printed).", show_default=False
        ),
    ] = None,
    dead_letter_topic: Annotated[
        str | None, typer.Option(help="A topic of dead letters.", show_default=False)
    ] = None,
    dead_letter_table: Annotated[
        str | None, typer.Option(help="A table of dead letters.", show_default=False)
    ] = None,
    expect: Annotated[
        Expect | None,
        typer.Option(help="Exit 1 unless this guarantee held.", show_default=False),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds without new records that mark the end."),
    ] = 2.0,
    end_timeout: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Give up waiting for a partition to reach its high watermark after this.",
        ),
    ] = 30.0,
    examples: Annotated[int, typer.Option(min=0, help="Example positions per problem.")] = 10,
    replay_topic: Annotated[
        list[str] | None,
        typer.Option(
            "--replay-topic",
            help="A topic 'headrace dead-letters replay' wrote to (repeatable): outputs of "
            "its records count for the record that was dead-lettered, and the dead letters "
            "replayed count no more.",
            show_default=False,
        ),
    ] = None,
    settings: Settings = None,
    json: Json = False,
) -> None:
    """Check that every record of the input topic reached the output (or a dead letter):
    counts missing, duplicated and unexpected positions."""
    if (output_topic is None) == (output_table is None):
        raise typer.BadParameter(
            "give exactly one of --output-topic and --output-table",
            param_hint="'--output-topic' / '--output-table'",
        )
    if dead_letter_topic is not None and dead_letter_table is not None:
        raise typer.BadParameter(
            "give at most one of --dead-letter-topic and --dead-letter-table",
            param_hint="'--dead-letter-topic' / '--dead-letter-table'",
        )
    if (output_table is not None or dead_letter_table is not None) and not dsn:
        raise typer.BadParameter("reading a table needs --dsn", param_hint="'--dsn'")
    if idle_timeout <= 0:
        raise typer.BadParameter("must be positive", param_hint="'--idle-timeout'")
    if end_timeout < idle_timeout:
        raise typer.BadParameter("must be at least --idle-timeout", param_hint="'--end-timeout'")
    config = _settings(settings)
    try:
        from headrace.tools.audit import AuditError
        from headrace.tools.audit import audit as run_audit
    except ImportError as exc:
        raise _needs("kafka", exc) from None
    err = Console(stderr=True, soft_wrap=True)
    if config:
        err.print(f"consumer settings: {describe(config)}", highlight=False)
    try:
        report = run_audit(
            bootstrap,
            input_topic,
            output_topic=output_topic,
            output_table=output_table,
            dsn=dsn,
            dead_letter_topic=dead_letter_topic,
            dead_letter_table=dead_letter_table,
            idle_timeout=idle_timeout,
            end_timeout=end_timeout,
            config=config,
            examples=examples,
            replay_topics=replay_topic or (),
        )
    except ImportError as exc:
        raise _needs("postgres", exc) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except AuditError as exc:
        err.print(Text.assemble(("cannot audit ", "red"), str(exc)))
        raise typer.Exit(EXIT_UNREADABLE) from None
    out = Console(soft_wrap=False)
    out.print(report.to_table())
    if json:
        _print_json(_report_dict(report))
    if expect is not None:
        held = report.holds(expect.value)
        verdict = "[green]holds[/green]" if held else "[red]does NOT hold[/red]"
        err.print(f"{expect.value}: {verdict}", highlight=False)
        if not held:
            raise typer.Exit(EXIT_FAILED)


def _report_dict(report: AuditReport) -> dict[str, Any]:
    out: dict[str, Any] = {
        f: getattr(report, f) for f in report.__dataclass_fields__ if not f.endswith("examples")
    }
    for f in ("missing_examples", "duplicated_examples", "unexpected_examples"):
        out[f] = [p._asdict() for p in getattr(report, f)]
    out["holds"] = {m.value: report.holds(m.value) for m in Expect}
    return out


dead_letters_app = typer.Typer(
    help="Dead letters in a Kafka topic: replay them.", no_args_is_help=True
)


@dead_letters_app.command("replay")
def replay_dead_letters(
    bootstrap: Bootstrap,
    from_topic: Annotated[
        str, typer.Option("--from", help="The dead-letter topic, read from its beginning.")
    ],
    to_topic: Annotated[
        str, typer.Option("--to", help="The topic the original records are produced to.")
    ],
    stage: Annotated[
        list[str] | None,
        typer.Option(
            "--stage", help="Only dead letters of this stage (repeatable).", show_default=False
        ),
    ] = None,
    error_type: Annotated[
        list[str] | None,
        typer.Option(
            "--error-type",
            help="Only dead letters of this error type (repeatable).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be replayed; produce nothing.")
    ] = False,
    end_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Give up on a partition that makes no progress this long."),
    ] = 30.0,
    settings: Settings = None,
    json: Json = False,
) -> None:
    """Re-produce dead letters' original key and value to another topic, with headers
    that record the replay (headrace-replayed-from, -source, -stage, -error-type); prints
    counts by stage and error type. Commits nothing: a second run replays again."""
    from headrace.errors import ErrorType, Stage

    for values, allowed, hint in (
        (stage or [], [str(s) for s in Stage], "'--stage'"),
        (error_type or [], [str(e) for e in ErrorType], "'--error-type'"),
    ):
        for value in values:
            if value not in allowed:
                raise typer.BadParameter(
                    f"{value!r} is none of: {', '.join(allowed)}", param_hint=hint
                )
    config = _settings(settings)
    try:
        from headrace.tools.replay import ReplayError, replay
    except ImportError as exc:
        raise _needs("kafka", exc) from None
    err = Console(stderr=True, soft_wrap=True)
    if config:
        err.print(f"client settings: {describe(config)}", highlight=False)
    try:
        summary = replay(
            bootstrap,
            from_topic,
            to_topic,
            stages=stage or (),
            error_types=error_type or (),
            dry_run=dry_run,
            config=config,
            end_timeout=end_timeout,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except ReplayError as exc:
        err.print(Text.assemble(("cannot replay ", "red"), str(exc)))
        raise typer.Exit(EXIT_UNREADABLE) from None
    _report_replay(summary)
    if json:
        _print_json(_replay_dict(summary))
    if summary.failed or summary.incomplete:
        raise typer.Exit(EXIT_FAILED)


def _report_replay(s: ReplaySummary) -> None:
    out = Console(soft_wrap=True)
    verb = "would replay" if s.dry_run else "replayed"
    table = Table(title=f"{verb} {s.from_topic} → {s.to_topic}", title_justify="left")
    table.add_column("stage")
    table.add_column("error type")
    table.add_column("records", justify="right")
    for (stage, error_type), n in sorted(s.selected.items()):
        table.add_row(stage, error_type, f"{n:,}")
    out.print(table)
    done = f"{s.selected_count:,} selected" + (
        " (dry run: nothing produced)" if s.dry_run else f", {s.produced:,} produced"
    )
    out.print(
        f"read {s.read:,} records of {s.from_topic}: {done}, {s.skipped:,} left out by "
        f"the filters, {s.not_dead_letters:,} not dead letters; {s.elapsed:.2f} s",
        highlight=False,
    )
    err = Console(stderr=True, soft_wrap=True)
    if s.failed:
        err.print(f"[red]{s.failed:,} records not delivered[/red]", highlight=False)
    for e in s.errors:
        err.print(f"  {e}", highlight=False, markup=False)
    if s.incomplete:
        err.print(f"[red]not read to the end:[/red] {', '.join(s.incomplete)}", highlight=False)


def _replay_dict(s: ReplaySummary) -> dict[str, Any]:
    return {
        "from": s.from_topic,
        "to": s.to_topic,
        "read": s.read,
        "selected": s.selected_count,
        "produced": s.produced,
        "failed": s.failed,
        "skipped": s.skipped,
        "not_dead_letters": s.not_dead_letters,
        "dry_run": s.dry_run,
        "by_kind": [
            {"stage": st, "error_type": et, "count": n}
            for (st, et), n in sorted(s.selected.items())
        ],
        "incomplete": s.incomplete,
    }


def register(app: typer.Typer) -> None:
    """Add ``loadgen``, ``audit`` and ``dead-letters`` to ``app``."""
    app.command("loadgen")(loadgen)
    app.command("audit")(audit)
    app.add_typer(dead_letters_app, name="dead-letters")
