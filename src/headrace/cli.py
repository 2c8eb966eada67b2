"""The ``headrace`` command: run, validate, demo."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shlex
import socket
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from headrace import defaults
from headrace.build import check_model, registry_source
from headrace.config import (
    ConfigError,
    PipelineConfig,
    RegistryModelConfig,
    load_config,
    sink_name,
)
from headrace.connectors.extras import MissingExtraError
from headrace.models.integrity import ModelLoadError
from headrace.observe.api import MetricsPortError
from headrace.observe.live import LiveLine, summary_table
from headrace.observe.stacks import register_thread_dump
from headrace.pipeline import Pipeline
from headrace.registry.commands import app as registry_app
from headrace.registry.local import RegistryError
from headrace.runtime.engine import Engine, PipelineError
from headrace.runtime.processes import ModelNotPicklable, check_picklable
from headrace.tools.commands import register as register_tools

app = typer.Typer(
    help="Headrace: streaming inference — score every event as it flows.",
    no_args_is_help=True,
    add_completion=False,
)
# Progress and logs go to stderr: stdout belongs to the stdout sink.
err = Console(stderr=True, soft_wrap=True)

EXIT_PIPELINE = 1
EXIT_CONFIG = 2

ConfigPath = Annotated[Path, typer.Argument(help="Pipeline YAML file.", show_default=False)]
ConfigPaths = Annotated[list[Path], typer.Argument(help="Pipeline YAML files.", show_default=False)]
LEVELS = ("debug", "info", "warning", "error")


def _level(value: str) -> str:
    """A log level, any case; anything else is a usage error (exit 2), not a traceback."""
    if value.lower() not in LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LEVELS)}")
    return value.lower()


LogLevel = Annotated[
    str, typer.Option("--log-level", help="debug, info, warning or error.", callback=_level)
]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _config_error(exc: Exception) -> None:
    """One line on stderr: what is wrong with a pipeline file, and where. ``run`` and
    ``validate`` print the same line for the same mistake."""
    err.print(f"[red]configuration error[/red] {escape(str(exc))}", highlight=False)


def _load(path: Path) -> PipelineConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        _config_error(exc)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def run(
    config: ConfigPath,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics and /health on this port (127.0.0.1).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the live progress line on stderr.")] = True,
    log_level: LogLevel = "warning",
    workers: Annotated[
        str,
        typer.Option(
            help="Worker processes in the Kafka source's group (auto: one per core), "
            "restarted when they die, with one /metrics for all."
        ),
    ] = "1",
    from_timestamp: Annotated[
        str | None,
        typer.Option(
            "--from-timestamp",
            help="A kafka source's partitions without a committed offset start at the first "
            "record at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z); "
            "overrides source.start.",
            show_default=False,
        ),
    ] = None,
    reset_offsets: Annotated[
        bool,
        typer.Option(
            "--reset-offsets",
            help="Also move the group's committed offsets to the start (source.start or "
            "--from-timestamp), once per partition; one worker only.",
        ),
    ] = False,
) -> None:
    """Run the pipeline a YAML file describes, until its source ends or SIGTERM/SIGINT."""
    _logging(log_level)
    # `kill -USR1 PID`: every thread's stack on stderr (and, while the engine runs, every
    # task's), the process going on. For a worker that does not stop: what it waits for.
    register_thread_dump()
    cfg = _start(config, _load(config), from_timestamp, reset_offsets, workers)
    if workers != "1":
        args = [] if from_timestamp is None else ["--from-timestamp", from_timestamp]
        raise typer.Exit(_supervise(config, cfg, workers, metrics_port, progress, log_level, args))
    try:
        pipeline = Pipeline.from_config(cfg, path=config)
        _check_model_calls(cfg, pipeline, config)
    except (ConfigError, ModelLoadError) as exc:
        _config_error(exc)
        raise typer.Exit(EXIT_CONFIG) from None
    except MissingExtraError as exc:
        _missing_extra(exc)
        raise typer.Exit(EXIT_CONFIG) from None
    if reset_offsets:
        _reset_offsets(pipeline)
    if metrics_port is not None:
        host = cfg.metrics.host if cfg.metrics else defaults.METRICS_HOST
        pipeline.metrics(port=metrics_port, host=host)

    async def main() -> None:
        lines: list[LiveLine] = []

        def started(engine: Engine) -> None:
            if engine.served_at is not None:
                url = engine.served_at
                err.print(f"dashboard: {url}  metrics: {url}metrics", highlight=False)
            if progress:
                lines.append(LiveLine(engine.stats, err))
                lines[0].start()

        try:
            summary = await pipeline.run_async(on_start=started)
        finally:
            for line in lines:
                await line.stop()
        err.print(summary_table(summary, title=cfg.name))

    try:
        asyncio.run(main())
    except MetricsPortError as exc:
        setting = "--metrics-port" if metrics_port is not None else f"metrics.port in {config}"
        err.print(
            f"[red]pipeline not started:[/red] {escape(str(exc))} — the port comes from {setting}",
            highlight=False,
        )
        raise typer.Exit(EXIT_PIPELINE) from None
    except PipelineError as exc:
        _stopped(exc)


def _start(
    config: Path, cfg: PipelineConfig, from_timestamp: str | None, reset: bool, workers: str
) -> PipelineConfig:
    """The configuration with ``--from-timestamp`` in ``source.start``; exits 2 with one
    line when the options do not fit the pipeline."""
    from headrace.config import KafkaSourceConfig, StartConfig, parse_start_timestamp

    def refuse(message: str) -> typer.Exit:
        err.print(f"[red]{escape(message)}[/red]", highlight=False)
        return typer.Exit(EXIT_CONFIG)

    if from_timestamp is None and not reset:
        return cfg
    src = cfg.source
    option = "--from-timestamp" if from_timestamp is not None else "--reset-offsets"
    if not isinstance(src, KafkaSourceConfig):
        raise refuse(
            f"{option}: {config} reads a {type(src).__struct_config__.tag} source; only a "
            "kafka source has offsets to start from"
        )
    if from_timestamp is not None:
        try:
            when = parse_start_timestamp(from_timestamp)
        except ValueError as exc:
            raise refuse(f"--from-timestamp: {exc}") from None
        src = msgspec.structs.replace(src, start=StartConfig(timestamp=when))
        cfg = msgspec.structs.replace(cfg, source=src)
    if reset and src.start is None:
        raise refuse(
            f"--reset-offsets: {config} has no source.start; say where to move the offsets "
            "to with source.start or --from-timestamp"
        )
    if reset and workers != "1":
        raise refuse(
            "--reset-offsets runs with one worker: each worker the supervisor restarts "
            "would move the offsets again"
        )
    return cfg


def _reset_offsets(pipeline: Pipeline) -> None:
    """Let the pipeline's Kafka source move committed offsets to its start."""
    from dataclasses import replace

    from headrace.connectors.kafka import KafkaSource

    source = pipeline.spec.source
    assert isinstance(source, KafkaSource) and source.start is not None
    source.start = replace(source.start, reset=True)


def _supervise(
    config: Path,
    cfg: PipelineConfig,
    workers: str,
    metrics_port: int | None,
    progress: bool,
    log_level: str,
    extra_args: list[str] | None = None,
) -> int:
    """``run --workers N``: N processes of this pipeline, supervised."""
    from headrace.config.components import KafkaSourceConfig
    from headrace.config.instance import INSTANCE_ID_ENV
    from headrace.supervise import Supervisor, worker_count

    try:
        n = worker_count(workers)
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        return EXIT_CONFIG
    if not isinstance(cfg.source, KafkaSourceConfig):
        err.print(
            f"[red]--workers {workers}: {config} reads a "
            f"{type(cfg.source).__struct_config__.tag} source, which one "
            "process reads; only a kafka source's partitions are shared by workers[/red]",
            highlight=False,
        )
        return EXIT_CONFIG
    port = metrics_port if metrics_port is not None else cfg.metrics.port if cfg.metrics else None
    host = cfg.metrics.host if cfg.metrics else defaults.METRICS_HOST
    given = cfg.source.instance_id or os.environ.get(INSTANCE_ID_ENV)
    supervisor = Supervisor(
        config,
        n,
        args=["--log-level", log_level, *(extra_args or [])],
        metrics=None if port is None else (host, port),
        progress=progress,
        # Without an id of the user's, one of this supervisor's own: unique on the machine.
        base_id=None if given else f"{socket.gethostname()}-{os.getpid()}",
    )
    try:
        return supervisor.run()
    except MetricsPortError as exc:
        setting = "--metrics-port" if metrics_port is not None else f"metrics.port in {config}"
        err.print(
            f"[red]workers not started:[/red] {escape(str(exc))} — the port comes from {setting}",
            highlight=False,
        )
        supervisor.stop()
        return EXIT_PIPELINE


def _missing_extra(exc: MissingExtraError, path: Path | None = None) -> None:
    """One line on stderr for a connector whose client library is not installed: which
    extra to install (``validate`` also names the file: it may check several)."""
    where = f"{path}: " if path is not None else ""
    err.print(f"[red]{escape(where + str(exc))}[/red]", highlight=False)


def _stopped(exc: PipelineError) -> None:
    """One line on stderr for a pipeline that stopped on an error; exits 1."""
    err.print(f"[red]pipeline stopped:[/red] {escape(str(exc))}", highlight=False)
    raise typer.Exit(EXIT_PIPELINE) from None


@app.command()
def validate(
    configs: ConfigPaths,
    load_model: Annotated[
        bool, typer.Option("--load-model", help="Also load the model into its runtime.")
    ] = False,
) -> None:
    """Check pipeline files: schema, cross-key rules, the model file's sha256, or that a
    callable model's module imports (its code runs) and has the function.

    One file: prints what the pipeline would do, never the values of its settings (they
    may hold secrets). Several files: one line each. Exits 2 if any is invalid.
    """
    invalid = [path for path in configs if not _validate(path, load_model, len(configs) == 1)]
    if invalid:
        raise typer.Exit(EXIT_CONFIG)


def _validate(config: Path, load_model: bool, details: bool) -> bool:
    """Check one file: print its line (and with ``details``, what it runs); False if invalid."""
    try:
        cfg = load_config(config)
        model = cfg.model
        check_model(cfg, path=config)
        if isinstance(model, RegistryModelConfig) and load_model:
            # Resolve the reference, check the sha256, load and validate: what the
            # pipeline does when it starts.
            try:
                source = registry_source(model.ref, model)
                source.load(source.latest())
            except (ModelLoadError, RegistryError) as exc:
                raise ModelLoadError(f"{config}: at model.ref: {exc}") from exc
        if load_model:
            _check_model_calls(cfg, Pipeline.from_config(cfg, path=config), config)
    except (ConfigError, ModelLoadError, RegistryError) as exc:
        _config_error(exc)
        return False
    except MissingExtraError as exc:
        _missing_extra(exc, config)
        return False
    typer.echo(f"{config}: valid")
    if details:
        _describe(cfg)
    return True


def _check_model_calls(cfg: PipelineConfig, pipeline: Pipeline, config: Path) -> None:
    """``model_calls: process`` with a model that cannot be sent to a process: a
    configuration error of this file, from ``validate --load-model`` and ``run`` alike
    (the engine checks it again at its start, for pipelines built in code)."""
    model = pipeline.spec.model
    if cfg.batching.model_calls != "process" or model is None:
        return
    try:
        check_picklable(model)
    except ModelNotPicklable as exc:
        raise ConfigError(f"{config}: at {exc}") from None


def _describe(cfg: PipelineConfig) -> None:
    model = cfg.model
    sinks = ", ".join(f"{sink_name(s)} ({type(s).__struct_config__.tag})" for s in cfg.sinks)
    typer.echo(f"  pipeline    {cfg.name}")
    typer.echo(f"  source      {type(cfg.source).__struct_config__.tag}")
    start = getattr(cfg.source, "start", None)
    if start is not None:
        at = start if isinstance(start, str) else start.timestamp.isoformat()
        typer.echo(f"  start       {at} (partitions with no committed offset)")
    typer.echo(
        f"  model       {model.name} version {model.version} ({type(model).__struct_config__.tag})"
    )
    calls = cfg.batching.model_calls
    if calls != "thread":
        where = f" ({cfg.batching.max_concurrency} processes)" if calls == "process" else ""
        typer.echo(f"  model calls {calls}{where}")
    typer.echo(f"  sinks       {sinks}")
    if cfg.dead_letter is not None:
        typer.echo(f"  dead letter {sink_name(cfg.dead_letter, dead_letter=True)}")
    if cfg.priority is not None:
        typer.echo(f"  priority    {cfg.priority.field}: {', '.join(cfg.priority.levels)}")
    if cfg.shedding is not None:
        shed = cfg.shedding
        levels = ", ".join(shed.priorities) if shed.priorities else "lowest level"
        typer.echo(f"  shedding    {levels} to {sink_name(shed.destination, shed=True)}")
    for lookup in cfg.enrich:
        tag = type(lookup).__struct_config__.tag
        into = lookup.into or lookup.name
        typer.echo(f"  enrich      {lookup.name}: {tag} by {lookup.key_field} into {into}.*")
    if cfg.windows is not None:
        w = cfg.windows
        length = {"session": f"gap {w.gap_s}", "hopping": f"{w.size_s} every {w.hop_s}"}
        typer.echo(
            f"  windows     {w.type} {length.get(w.type, w.size_s)} s by "
            f"{w.key_field or 'record key'}: {', '.join(w.features)}"
        )


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long to run.", min=0.1)] = 10.0,
    rate: Annotated[
        float, typer.Option(help="Events per second (0: as fast as possible).", min=0)
    ] = 2000.0,
    out: Annotated[Path, typer.Option(help="Where the model and outputs go.")] = Path(
        "demo-output"
    ),
    rebuild: Annotated[bool, typer.Option(help="Rebuild the model even if one exists.")] = False,
    model_only: Annotated[
        bool,
        typer.Option(
            "--model-only",
            help="Only build (or reuse) the model, and print the shell lines that export "
            "DEMO_DIR and DEMO_MODEL_SHA256 for the example pipelines: "
            'eval "$(headrace demo --model-only)".',
        ),
    ] = False,
) -> None:
    """Build a small anomaly model and score synthetic sensor events with it: no broker,
    no server. Writes a SQLite table of predictions and a JSON-lines file of alerts."""
    try:
        from headrace.demo import demo_model, run_demo
    except ImportError as exc:
        err.print(
            f"[red]the demo needs the demo extras[/red] ({exc.name} is missing): "
            "pip install 'headrace[demo]'"
        )
        raise typer.Exit(EXIT_CONFIG) from None
    if model_only:
        out.mkdir(parents=True, exist_ok=True)
        _, sha256 = demo_model(out, rebuild=rebuild, console=err)
        typer.echo(f"export DEMO_DIR={shlex.quote(str(out))}")
        typer.echo(f"export DEMO_MODEL_SHA256={sha256}")
        return
    try:
        run_demo(directory=out, rate=rate, seconds=seconds, rebuild=rebuild, console=err)
    except PipelineError as exc:
        _stopped(exc)


register_tools(app)
app.add_typer(registry_app, name="registry")


def _reflow_help(typer_app: typer.Typer) -> None:
    """Make each paragraph of every command's help one line, for rich to wrap at the
    terminal's width: a docstring wraps at the source's, and typer keeps its line breaks."""
    for command in typer_app.registered_commands:
        text = command.help or inspect.getdoc(command.callback)
        if text:
            command.help = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
