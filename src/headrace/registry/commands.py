"""``headrace registry register|list|show|promote|rollback``: the registry on the command line.

Every command takes ``--root`` (default: ``$HEADRACE_REGISTRY``, else ``./model-registry``).
Exit codes: 0 success; 2 a usage or registry error, printed as one line on stderr. Tables
and metadata go to stdout; an artifact's bytes are never printed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from headrace.registry.local import (
    FORMATS,
    NAME_PATTERN,
    LocalRegistry,
    RegistryError,
    Sample,
    Signature,
    VersionInfo,
)

EXIT_USAGE = 2

app = typer.Typer(
    name="registry",
    help="The model registry: register versions, list them, move aliases.",
    no_args_is_help=True,
    add_completion=False,
)

Root = Annotated[
    Path,
    typer.Option(
        "--root",
        envvar="HEADRACE_REGISTRY",
        help="The registry directory (default: $HEADRACE_REGISTRY, else ./model-registry).",
        show_default=False,
    ),
]
DEFAULT_ROOT = Path("model-registry")
Alias = Annotated[str, typer.Option("--alias", "-a", help="The alias to move.")]


def _err() -> Console:
    # Made per call, so a test runner's swapped stderr is the one written to.
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _out() -> Console:
    return Console(soft_wrap=True, highlight=False)


def _fail(message: str) -> typer.Exit:
    # Text, not markup: messages quote shapes like [None, 8] that markup would eat.
    _err().print(Text.assemble(("registry error ", "red"), message))
    return typer.Exit(EXIT_USAGE)


def _value(text: str) -> Any:
    """A ``k=v`` value: JSON when it parses (numbers, true, null, lists), else the string.

    >>> _value("0.93"), _value("true"), _value("label")
    (0.93, True, 'label')
    """
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _pairs(items: list[str] | None, option: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise _fail(f"{option}: expected key=value, got {item!r}")
        result[key.strip()] = _value(value)
    return result


def _shape(text: str) -> list[int | None]:
    """``None,8`` as ``[None, 8]`` (``None``, ``?`` or ``-1`` for a free dimension)."""
    shape: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part.lower() in ("none", "?", "-1"):
            shape.append(None)
            continue
        try:
            shape.append(int(part))
        except ValueError:
            raise _fail(
                f"--shape: expected comma-separated integers or None, got {text!r}"
            ) from None
    return shape


def _samples(path: Path) -> list[Sample]:
    try:
        return msgspec.json.decode(path.read_bytes(), type=list[Sample])
    except OSError as exc:
        raise _fail(f"--samples: cannot read {path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise _fail(
            f"--samples: {path}: expected a JSON list of {{input, expected, tolerance}}: {exc}"
        ) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="The model name.", show_default=False)],
    artifact: Annotated[
        Path, typer.Argument(help="The model file to copy in.", show_default=False)
    ],
    format: Annotated[
        str,
        typer.Option("--format", "-f", help=f"One of {', '.join(FORMATS)}.", show_default=False),
    ],
    version: Annotated[
        str | None,
        typer.Option(help="The version (default: the next integer).", show_default=False),
    ] = None,
    signature_fields: Annotated[
        str | None,
        typer.Option(help="Input field names, comma-separated.", show_default=False),
    ] = None,
    shape: Annotated[
        str | None,
        typer.Option(help="Input shape, e.g. None,8 (None: the batch).", show_default=False),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="Input dtype of the signature (default float32).", show_default=False),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="A metric, key=value (repeatable).", show_default=False),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            help="JSON list of {input, expected, tolerance}: sample batches and their outputs.",
            show_default=False,
        ),
    ] = None,
    trusted_type: Annotated[
        list[str] | None,
        typer.Option(help="A type skops may load (repeatable).", show_default=False),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            help="A format option, key=value (repeatable): onnx output, threads; xgboost and "
            "lightgbm output (value or raw_margin), threads; skops method, negate; "
            "torch-weights factory=module:callable.",
            show_default=False,
        ),
    ] = None,
    promote: Annotated[
        str | None,
        typer.Option(help="Also point this alias at the new version.", show_default=False),
    ] = None,
    root: Root = DEFAULT_ROOT,
) -> None:
    """Copy a model file in as a new version, recording its sha256 and metadata."""
    if promote is not None and not NAME_PATTERN.fullmatch(promote):
        # Checked first: the version must not be registered if its promotion cannot happen.
        raise _fail(
            f"--promote: alias {promote!r} is not allowed: use letters, digits, '.', '_' or '-'"
        )
    signature = None
    if signature_fields is not None or shape is not None or dtype is not None:
        fields = [f.strip() for f in signature_fields.split(",")] if signature_fields else None
        try:
            signature = Signature(
                fields=fields,
                shape=_shape(shape) if shape is not None else [],
                dtype=dtype or "float32",
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
    metrics = _pairs(metric, "--metric")
    options = _pairs(option, "--option")
    sample_list = _samples(samples) if samples is not None else None
    registry = LocalRegistry(root)
    try:
        info = registry.register(
            name,
            artifact,
            format=format,
            version=version,
            signature=signature,
            metrics=metrics,
            samples=sample_list,
            trusted_types=trusted_type or (),
            options=options,
        )
        typer.echo(f"registered {info.name} version {info.version} (sha256 {info.sha256})")
        if promote is not None:
            state = registry.promote(name, info.version, promote)
            typer.echo(f"{name}: {promote} -> {state.version}")
    except RegistryError as exc:
        raise _fail(str(exc)) from None


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="Only this model.", show_default=False)] = None,
    root: Root = DEFAULT_ROOT,
) -> None:
    """List the models, their versions and the aliases pointing at each."""
    registry = LocalRegistry(root)
    try:
        names = [name] if name is not None else registry.names()
        if not names:
            _out().print(f"no models in {root}")
            return
        table = Table(title=f"models in {root}")
        for column in ("model", "version", "format", "created (UTC)", "sha256", "aliases"):
            table.add_column(column, no_wrap=column != "aliases")
        for model in names:
            pointing: dict[str, list[str]] = {}
            for alias, state in sorted(registry.aliases(model).items()):
                pointing.setdefault(state.version, []).append(alias)
            for info in registry.versions(model):
                table.add_row(
                    info.name,
                    info.version,
                    info.format,
                    _when(info.created_at),
                    info.short_sha,
                    ", ".join(pointing.get(info.version, [])),
                )
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    _out().print(table)


@app.command()
def show(
    ref: Annotated[
        str,
        typer.Argument(
            help="NAME (the model's versions and aliases), NAME/VERSION or NAME@ALIAS.",
            show_default=False,
            metavar="NAME[/VERSION]",
        ),
    ],
    json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
    root: Root = DEFAULT_ROOT,
) -> None:
    """Show a version's metadata, or a model's versions and alias histories."""
    registry = LocalRegistry(root)
    try:
        if "/" in ref:
            name, _, version = ref.partition("/")
            info = registry.get(name, version)
        elif "@" in ref:
            name, _, alias = ref.partition("@")
            info = registry.resolve(name, alias)
        else:
            _show_model(registry, ref, json)
            return
        aliases = registry.aliases(info.name)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    pointing = sorted(a for a, s in aliases.items() if s.version == info.version)
    if json:
        typer.echo(msgspec.json.encode(info).decode())
        return
    _show_version(info, pointing)


def _show_version(info: VersionInfo, aliases: list[str]) -> None:
    out = _out()
    rows: list[tuple[str, str]] = [
        ("model", info.name),
        ("version", info.version),
        ("format", info.format),
        ("artifact", info.artifact),
        ("sha256", info.sha256),
        ("created", _when(info.created_at)),
        ("aliases", ", ".join(aliases) or "-"),
    ]
    if info.signature is not None:
        sig = info.signature
        shape = "[" + ", ".join("None" if d is None else str(d) for d in sig.shape) + "]"
        fields = ", ".join(sig.fields) if sig.fields is not None else "-"
        rows.append(("signature", f"fields {fields}; shape {shape}; dtype {sig.dtype}"))
    for key, value in sorted(info.metrics.items()):
        rows.append((f"metric {key}", _plain(value)))
    if info.samples:
        tolerances = sorted({s.tolerance for s in info.samples})
        rows.append(
            (
                "samples",
                f"{len(info.samples)} (tolerance {', '.join(map(str, tolerances))})",
            )
        )
    if info.trusted_types:
        rows.append(("trusted types", ", ".join(info.trusted_types)))
    for key, value in sorted(info.options.items()):
        rows.append((f"option {key}", _plain(value)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"{key:<{width}}  {value}", markup=False)


def _plain(value: Any) -> str:
    """A metadata value for people: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _show_model(registry: LocalRegistry, name: str, json: bool) -> None:
    versions = registry.versions(name)
    aliases = registry.aliases(name)
    if json:
        typer.echo(
            msgspec.json.encode(
                {"name": name, "versions": [v.version for v in versions], "aliases": aliases}
            ).decode()
        )
        return
    out = _out()
    out.print(f"model {name}: {len(versions)} version(s)", markup=False)
    for info in versions:
        out.print(
            f"  {info.version}  {info.format}  {_when(info.created_at)}  {info.short_sha}",
            markup=False,
        )
    for alias, state in sorted(aliases.items()):
        before = " <- ".join(reversed(state.history))
        out.print(
            f"  {alias} -> {state.version}" + (f" (before: {before})" if before else ""),
            markup=False,
        )


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="The model name.", show_default=False)],
    version: Annotated[str, typer.Argument(help="The version to point at.", show_default=False)],
    alias: Alias = "production",
    root: Root = DEFAULT_ROOT,
) -> None:
    """Point an alias at a version; the version it pointed at goes on its history."""
    registry = LocalRegistry(root)
    try:
        before = registry.aliases(name).get(alias)
        state = registry.promote(name, version, alias)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    was = f" (was {before.version})" if before is not None else ""
    if before is not None and before.version == state.version:
        was = " (unchanged)"
    typer.echo(f"{name}: {alias} -> {state.version}{was}")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="The model name.", show_default=False)],
    alias: Alias = "production",
    root: Root = DEFAULT_ROOT,
) -> None:
    """Point an alias back at the version it pointed at before its last change."""
    registry = LocalRegistry(root)
    try:
        before = registry.aliases(name).get(alias)
        state = registry.rollback(name, alias)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    was = f" (was {before.version})" if before is not None else ""
    typer.echo(f"{name}: {alias} -> {state.version}{was}")
