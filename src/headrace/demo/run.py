"""Running the demo: build the model, render the pipeline, run it with a live line."""

from __future__ import annotations

import asyncio
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from headrace.config import PipelineConfig, interpolate, parse_config
from headrace.connectors.generator import GeneratorSource
from headrace.demo.model import build_demo_model
from headrace.models.integrity import sha256_of
from headrace.observe.live import LiveLine, summary_table
from headrace.pipeline import Pipeline
from headrace.runtime.engine import Engine, RunSummary

TEMPLATE = "pipeline.yaml"


def demo_config(directory: Path, *, rate: float, seconds: float, sha256: str) -> PipelineConfig:
    """The demo pipeline, with its directory, pace and model checksum filled in."""
    text = resources.files("headrace.demo").joinpath(TEMPLATE).read_text()
    env = {
        **os.environ,
        "DEMO_DIR": str(directory),
        "DEMO_RATE": str(rate),
        "DEMO_SECONDS": str(seconds),
        "DEMO_MODEL_SHA256": sha256,
    }
    data = interpolate(yaml.safe_load(text), env)
    config = parse_config(data, env=env, origin="demo pipeline")
    # ${...} fills in strings; the file a user runs again should hold numbers as numbers.
    (directory / "pipeline.yaml").write_text(yaml.safe_dump(_typed(data, config), sort_keys=False))
    return config


def _typed(data: Any, parsed: Any) -> Any:
    """``data`` (a parsed YAML document) with each string the configuration read as a
    number (``rate: "2000.0"``) replaced by that number."""
    if isinstance(data, dict):
        return {
            k: _typed(v, parsed.get(k) if isinstance(parsed, dict) else getattr(parsed, k, None))
            for k, v in data.items()
        }
    if isinstance(data, list) and isinstance(parsed, list | tuple):
        return [_typed(v, p) for v, p in zip(data, parsed, strict=False)]
    if isinstance(data, str) and isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return parsed
    return data


def demo_model(
    directory: str | Path = "demo-output", *, rebuild: bool = False, console: Console | None = None
) -> tuple[Path, str]:
    """Build the demo model as ``directory/anomaly.onnx`` (or reuse the one there, unless
    ``rebuild``); returns its path and sha256."""
    console = console or Console()
    model_path = Path(directory) / "anomaly.onnx"
    if rebuild or not model_path.exists():
        with console.status("building the anomaly model (IsolationForest -> ONNX)"):
            sha256 = build_demo_model(model_path)
        console.print(f"model: {model_path} (sha256 {sha256[:16]}…)")
    else:
        sha256 = sha256_of(model_path)
        console.print(f"model: {model_path} (reused; sha256 {sha256[:16]}…)")
    return model_path, sha256


def run_demo(
    *,
    directory: str | Path = "demo-output",
    rate: float = 2000.0,
    seconds: float = 10.0,
    rebuild: bool = False,
    console: Console | None = None,
) -> RunSummary:
    """Build (or reuse) the demo model, run the pipeline, and print a summary."""
    console = console or Console()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _, sha256 = demo_model(out, rebuild=rebuild, console=console)
    for stale in (
        "predictions.db",
        "predictions.db-wal",
        "predictions.db-shm",
        "alerts.jsonl",
        "dead-letters.jsonl",
    ):
        (out / stale).unlink(missing_ok=True)
    config = demo_config(out, rate=rate, seconds=seconds, sha256=sha256)
    pipeline = Pipeline.from_config(config)
    console.print(
        f"running {config.name}: {rate:g} events/s for {seconds:g} s (Ctrl-C stops it gracefully)"
    )
    summary, engine = asyncio.run(_run(pipeline, console))
    table = summary_table(summary, title="Demo summary")
    if isinstance(engine.source, GeneratorSource):
        table.add_row("injected anomalies", f"{engine.source.anomalies:,}")
    console.print(table)
    console.print(f"predictions: {out / 'predictions.db'} (table predictions)")
    console.print(f"alerts:      {out / 'alerts.jsonl'}")
    console.print(f"pipeline:    {out / 'pipeline.yaml'} (run it again: headrace run …)")
    return summary


async def _run(pipeline: Pipeline, console: Console) -> tuple[RunSummary, Engine]:
    lines: list[LiveLine] = []
    engines: list[Engine] = []

    def started(engine: Engine) -> None:
        line = LiveLine(engine.stats, console)
        line.start()
        lines.append(line)
        engines.append(engine)

    try:
        summary = await pipeline.run_async(on_start=started)
    finally:
        for line in lines:
            await line.stop()
    return summary, engines[0]
