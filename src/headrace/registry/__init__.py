"""The model registry: versions of models with their metadata, aliases that move between
them, and loading and validating a version before it serves.

The registry is a directory (:class:`LocalRegistry`); pipelines name models as
``registry:NAME@ALIAS`` or ``registry:NAME/VERSION`` (:func:`parse_reference`), and
``headrace registry ...`` manages it from the command line.
"""

from headrace.registry.loading import RegisteredModel, load_bytes, load_version
from headrace.registry.local import (
    AliasState,
    LocalRegistry,
    RegistryError,
    Sample,
    Signature,
    VersionInfo,
)
from headrace.registry.refs import ModelReference, ModelReferenceError, parse_reference
from headrace.registry.validation import ModelValidationError, validate_model

__all__ = [
    "AliasState",
    "LocalRegistry",
    "ModelReference",
    "ModelReferenceError",
    "ModelValidationError",
    "RegisteredModel",
    "RegistryError",
    "Sample",
    "Signature",
    "VersionInfo",
    "load_bytes",
    "load_version",
    "parse_reference",
    "validate_model",
]
