"""A registry reference as the model manager's source of versions."""

from __future__ import annotations

from headrace.models.base import Model
from headrace.registry.loading import load_version
from headrace.registry.local import LocalRegistry
from headrace.registry.refs import ModelReference
from headrace.registry.validation import validate_model


class RegistrySource:
    """Versions behind ``registry:NAME@ALIAS`` (or one pinned ``registry:NAME/VERSION``).

    :meth:`load` verifies the artifact's sha256, deserialises it and validates it (its
    signature, its sample inputs, and the latency budget if one is set) before the model
    may serve.
    """

    def __init__(
        self,
        registry: LocalRegistry,
        ref: ModelReference,
        *,
        allow_pickle: bool = False,
        latency_budget: float | None = None,
        device: str = "cpu",
    ) -> None:
        if ref.scheme != "registry":
            raise ValueError(f"{ref} is not a reference to the local registry")
        self.registry = registry
        self.ref = ref
        self.allow_pickle = allow_pickle
        self.latency_budget = latency_budget
        self.device = device

    def describe(self) -> str:
        return str(self.ref)

    def __str__(self) -> str:
        return str(self.ref)

    def latest(self) -> str:
        if self.ref.version is not None:
            return self.ref.version
        assert self.ref.alias is not None
        return self.registry.resolve(self.ref.name, self.ref.alias).version

    def load(self, version: str) -> Model:
        info = self.registry.get(self.ref.name, version)
        model = load_version(
            self.registry, info, allow_pickle=self.allow_pickle, device=self.device
        )
        validate_model(model, info, latency_budget_s=self.latency_budget)
        return model

    def roll_back(self, bad_version: str, to: str | None = None) -> None:
        alias = self.ref.alias
        if alias is None:
            return
        state = self.registry.aliases(self.ref.name).get(alias)
        if state is not None and state.version == bad_version and (state.history or to):
            self.registry.rollback(self.ref.name, alias, to=to)
