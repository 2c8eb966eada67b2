"""The ``headrace`` command: run, validate, demo."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from headrace.build import registry_source
from headrace.config import (
    CallableModelConfig,
    ConfigError,
    PipelineConfig,
    RegistryModelConfig,
    load_config,
    sink_name,
)
from headrace.models.integrity import ModelLoadError, read_verified
from headrace.observe.live import LiveLine, summary_table
from headrace.pipeline import Pipeline
from headrace.registry.commands import app as registry_app
from headrace.registry.local import RegistryError
from headrace.runtime.engine import Engine, PipelineError
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
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _load(path: Path) -> PipelineConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]configuration error[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def run(
    config: ConfigPath,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics and /health on this port (127.0.0.1).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the live progress line on stderr.")] = True,
    log_level: LogLevel = "warning",
) -> None:
    """Run the pipeline a YAML file describes, until its source ends or SIGTERM/SIGINT."""
    _logging(log_level)
    cfg = _load(config)
    try:
        pipeline = Pipeline.from_config(cfg)
    except (ConfigError, ModelLoadError) as exc:
        err.print(f"[red]cannot build the pipeline[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    if metrics_port is not None:
        pipeline.metrics(port=metrics_port, host=cfg.metrics.host if cfg.metrics else "127.0.0.1")

    async def main() -> None:
        lines: list[LiveLine] = []

        def started(engine: Engine) -> None:
            if progress:
                lines.append(LiveLine(engine, err))
                lines[0].start()

        try:
            summary = await pipeline.run_async(on_start=started)
        finally:
            for line in lines:
                await line.stop()
        err.print(summary_table(summary, title=cfg.name))

    try:
        asyncio.run(main())
    except PipelineError as exc:
        err.print(f"[red]pipeline stopped[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_PIPELINE) from None


@app.command()
def validate(
    config: ConfigPath,
    load_model: Annotated[
        bool, typer.Option("--load-model", help="Also load the model into its runtime.")
    ] = False,
) -> None:
    """Check a pipeline file: schema, cross-key rules, and the model file's sha256.

    Prints what the pipeline would do, never the values of its settings (they may hold
    secrets).
    """
    cfg = _load(config)
    model = cfg.model
    try:
        if isinstance(model, RegistryModelConfig):
            if load_model:
                # Resolve the reference, check the sha256, load and validate: what the
                # pipeline does when it starts.
                source = registry_source(model.ref, model)
                source.load(source.latest())
        elif not isinstance(model, CallableModelConfig):
            read_verified(model.path, model.sha256)
        if load_model:
            Pipeline.from_config(cfg)
    except (ConfigError, ModelLoadError, RegistryError) as exc:
        err.print(f"[red]invalid[/red] {config}: {exc}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    sinks = ", ".join(f"{sink_name(s)} ({type(s).__struct_config__.tag})" for s in cfg.sinks)
    typer.echo(f"{config}: valid")
    typer.echo(f"  pipeline    {cfg.name}")
    typer.echo(f"  source      {type(cfg.source).__struct_config__.tag}")
    typer.echo(
        f"  model       {model.name} version {model.version} ({type(model).__struct_config__.tag})"
    )
    typer.echo(f"  sinks       {sinks}")
    if cfg.dead_letter is not None:
        typer.echo(f"  dead letter {sink_name(cfg.dead_letter, dead_letter=True)}")
    if cfg.priority is not None:
        typer.echo(f"  priority    {cfg.priority.field}: {', '.join(cfg.priority.levels)}")
    if cfg.shedding is not None:
        shed = cfg.shedding
        levels = ", ".join(shed.priorities) if shed.priorities else "lowest level"
        typer.echo(f"  shedding    {levels} to {sink_name(shed.destination, shed=True)}")
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
) -> None:
    """Build a small anomaly model and score synthetic sensor events with it: no broker,
    no server. Writes a SQLite table of predictions and a JSON-lines file of alerts."""
    try:
        from headrace.demo import run_demo
    except ImportError as exc:
        err.print(
            f"[red]the demo needs the demo extras[/red] ({exc.name} is missing): "
            "pip install 'headrace[demo]'"
        )
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        run_demo(directory=out, rate=rate, seconds=seconds, rebuild=rebuild, console=err)
    except PipelineError as exc:
        err.print(f"[red]pipeline stopped[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_PIPELINE) from None


register_tools(app)
app.add_typer(registry_app, name="registry")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
