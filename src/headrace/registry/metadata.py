"""What the registry records about a version: its metadata (:class:`VersionInfo`, with
its :class:`Signature` and :class:`Sample` inputs), where aliases point
(:class:`AliasState`), the formats and the options each takes, and the rules names follow.

What changes with the contents of ``version.json`` and ``_aliases.json``; where they lie,
and how they are written safely, is :mod:`headrace.registry.local`. Nothing here touches
the file system.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, get_args

import msgspec
import numpy as np

from headrace.errors import HeadraceError

Format = Literal[
    "onnx", "skops", "xgboost", "lightgbm", "torchscript", "torch-weights", "pickle", "joblib"
]
FORMATS: Final[tuple[str, ...]] = get_args(Format)

#: Names of models, versions and aliases: they become path components, so no separators,
#: no leading dot (no ``..``), nothing a shell or a URL would need to quote.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# The artifact's file name in the version's directory, by format.
ARTIFACTS: Final[dict[str, str]] = {
    "onnx": "model.onnx",
    "skops": "model.skops",
    "xgboost": "model.ubj",  # model.json for a JSON model: see artifact_name
    "lightgbm": "model.txt",
    "torchscript": "model.pt",
    "torch-weights": "model.pt",
    "pickle": "model.pkl",
    "joblib": "model.joblib",
}
# The options each format understands, so that a typo fails at registration, not at load.
OPTIONS: Final[dict[str, dict[str, type | tuple[type, ...]]]] = {
    "onnx": {"output": str, "threads": int},
    "skops": {"method": str, "negate": bool},
    "xgboost": {"output": str, "threads": int},
    "lightgbm": {"output": str, "threads": int},
    "torchscript": {},
    "torch-weights": {"factory": str, "factory_kwargs": dict},
    "pickle": {"method": str, "negate": bool},
    "joblib": {"method": str, "negate": bool},
}
METHODS: Final = ("predict", "predict_proba", "decision_function", "score_samples")
#: The ``output`` option of the xgboost and lightgbm formats.
TREE_OUTPUTS: Final = ("value", "raw_margin")


def artifact_name(format: str, first_bytes: bytes) -> str:
    """The artifact's file name in a version's directory. An XGBoost model is UBJSON or
    JSON (what ``Booster.save_model`` wrote, by the file's suffix): it keeps the suffix
    that says which, so XGBoost can read the copy from its path too.

    >>> artifact_name("xgboost", b' { "learner": {}}'), artifact_name("xgboost", b"{L\\0")
    ('model.json', 'model.ubj')
    """
    # UBJSON opens an object with "{" too, then a length marker; JSON with a quoted key.
    head = first_bytes.lstrip()
    if format == "xgboost" and head[:1] == b"{" and head[1:].lstrip()[:1] in (b'"', b"}"):
        return "model.json"
    return ARTIFACTS[format]


class RegistryError(HeadraceError, ValueError):
    """A registry mistake: names the root, the model (version, alias) and what is wrong."""


class Signature(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a model takes: field names, the input shape (``None`` for the batch dimension,
    e.g. ``[None, 8]``) and the element dtype.

    >>> Signature(fields=["a", "b"], shape=[None, 2]).dtype
    'float32'
    >>> Signature(shape=[None, 0])
    Traceback (most recent call last):
    ...
    ValueError: signature shape: dimensions must be positive integers or None, got [None, 0]
    """

    fields: list[str] | None = None
    shape: list[int | None] = msgspec.field(default_factory=list)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if any(d is not None and (isinstance(d, bool) or d < 1) for d in self.shape):
            raise ValueError(
                f"signature shape: dimensions must be positive integers or None, got {self.shape!r}"
            )
        kind: str
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError:
            kind = ""
        if not kind or kind not in "biuf":
            raise ValueError(f"signature dtype: {self.dtype!r} is not a numeric NumPy dtype")


class Sample(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One batch of inputs (nested lists) and the outputs the model must give for it,
    numbers within ``tolerance`` (absolute)."""

    input: Any
    expected: Any
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:  # also catches NaN
            raise ValueError(f"sample tolerance must be >= 0, got {self.tolerance!r}")
        rows = _batch_len(self.input)
        if not rows:
            raise ValueError("sample input must be a non-empty list (one batch)")
        if _batch_len(self.expected) != rows:
            got = _batch_len(self.expected)
            raise ValueError(
                f"sample expected must hold one output per input row: {rows} rows, "
                f"expected has {'no list' if got is None else got}"
            )


def _batch_len(value: Any) -> int | None:
    if isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim):
        return len(value)
    return None


class VersionInfo(msgspec.Struct, kw_only=True):
    """Everything the registry knows about one version. ``artifact`` is the file name in
    the version's directory; ``options`` holds format-specific settings (onnx: ``output``,
    ``threads``; xgboost/lightgbm: ``output`` (``value`` or ``raw_margin``), ``threads``;
    skops/pickle/joblib: ``method``, ``negate``; torch-weights: ``factory``
    as ``module:callable`` building the ``nn.Module``, ``factory_kwargs``)."""

    name: str
    version: str
    format: Format
    artifact: str
    sha256: str
    created_at: float
    signature: Signature | None = None
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    samples: list[Sample] = msgspec.field(default_factory=list)
    trusted_types: list[str] = msgspec.field(default_factory=list)
    options: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def short_sha(self) -> str:
        """The first 12 hex digits of the sha256: what outputs and listings show."""
        return self.sha256[:12]


class AliasState(msgspec.Struct, kw_only=True):
    """Where an alias points, and where it pointed before (oldest first)."""

    version: str
    history: list[str] = msgspec.field(default_factory=list)
    updated_at: float = 0.0


_ALIASES_TYPE = dict[str, AliasState]


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sorts versions naturally: runs of digits compare as numbers.

    >>> sorted(["10", "9", "1.10", "1.9", "b", "a"], key=version_key)
    ['1.9', '1.10', '9', '10', 'a', 'b']
    """
    return tuple(
        (0, int(part), "") if part.isdecimal() else (1, 0, part)
        for part in re.findall(r"[0-9]+|[^0-9]+", version)
    )


def check_options(where: str, format: str, options: dict[str, Any]) -> None:
    """Refuse an option ``format`` does not take, or a value of the wrong type (``where``
    begins the message): a typo fails at registration, not when the version loads."""
    known = OPTIONS[format]
    for key, value in options.items():
        if key not in known:
            accepted = ", ".join(known) or "none"
            raise RegistryError(
                f"{where}: option {key!r} does not apply to {format} (it takes: {accepted})"
            )
        kind = known[key]
        # bool is an int in Python; an option that wants an int must not take True.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = kind.__name__ if isinstance(kind, type) else kind
            raise RegistryError(f"{where}: option {key!r} must be a {expected}, got {value!r}")
    if format in ("xgboost", "lightgbm") and options.get("output", "value") not in TREE_OUTPUTS:
        raise RegistryError(
            f"{where}: option 'output' must be one of {', '.join(TREE_OUTPUTS)}, got "
            f"{options['output']!r}"
        )
    method = options.get("method")
    if method is not None and method not in METHODS:
        raise RegistryError(
            f"{where}: option 'method' must be one of {', '.join(METHODS)}, got {method!r}"
        )
    if format == "torch-weights":
        factory = options.get("factory")
        module, _, attr = (factory or "").partition(":")
        if not module or not attr:
            raise RegistryError(
                f"{where}: torch-weights needs option 'factory' as 'module:callable' "
                f"(the function that builds the nn.Module), got {factory!r}"
            )


def normalised(where: str, info: VersionInfo) -> VersionInfo:
    """``info`` as it will read back from version.json: NumPy arrays and scalars in samples,
    metrics or options become lists and numbers, and anything JSON cannot hold is refused
    now rather than breaking the version file."""

    def numpy_to_json(obj: Any) -> Any:
        if isinstance(obj, np.ndarray | np.generic):
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not a JSON value")

    try:
        data = msgspec.json.encode(info, enc_hook=numpy_to_json)
        return msgspec.json.decode(data, type=VersionInfo)
    except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as exc:
        raise RegistryError(f"{where}: the metadata must be JSON values: {exc}") from None
