"""Reading a pipeline file: YAML, then ``${NAME}`` interpolation, then the schema, then
the Kafka source's instance id (which may come from the environment), then the rules
across keys. Every mistake is a :class:`ConfigError` that starts with where the
configuration came from."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from headrace.config.base import ConfigError
from headrace.config.instance import resolve_instance_id
from headrace.config.messages import explain
from headrace.config.rules import check, check_credentials
from headrace.config.schema import PipelineConfig

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed document."""
    if isinstance(data, dict):
        return {
            k: interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in data.items()
        }
    if isinstance(data, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:

        def value(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"at {where}: environment variable {name} is not set")

        return _VAR.sub(value, data)
    return data


def parse_config(
    data: Any, *, env: Mapping[str, str] | None = None, origin: str = "config"
) -> PipelineConfig:
    """Validate an already-parsed document (a dict) into a :class:`PipelineConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    env = os.environ if env is None else env
    check_credentials(data, origin)
    try:
        data = interpolate(data, env)
        # Lax conversion: a number that came in through ${VAR} arrives as a string.
        config = msgspec.convert(data, PipelineConfig, strict=False)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {explain(str(exc), data)}") from None
    config = resolve_instance_id(config, env, origin)
    check(config, origin)
    return config


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, env=env, origin=str(path))
