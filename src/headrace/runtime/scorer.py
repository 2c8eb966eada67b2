"""From a formed batch to scored batches: features, then the model serving now.

:class:`Scorer` knows which model serves (one fixed model, or a :class:`Rollout` that
manages versions) and turns a batch of records into scored batches, one per version, and
the records set aside on the way (invalid features, model failures).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from headrace.batch import columns_of
from headrace.errors import Stage, failure
from headrace.models.base import Model, model_ref
from headrace.models.featurizer import FeatureError, Featurizer
from headrace.record import BatchKind, FailedRecord, ModelRef, Record, ScoredBatch
from headrace.runtime.rollout import Rollout
from headrace.runtime.scoring import ModelCaller


@dataclass
class Scored:
    """One batch's outcome: the records that had valid inputs, those inputs, the batches
    to write (one per model version) and the records that failed."""

    records: Sequence[Record]
    inputs: Any
    batches: list[ScoredBatch] = field(default_factory=list)
    failed: list[FailedRecord] = field(default_factory=list)

    def outgoing(self) -> list[Sequence[Record]]:
        """Every record this batch writes somewhere, scored or failed, in pieces (a
        :class:`~headrace.batch.RecordBatch` stays one piece, its records not built)."""
        pieces: list[Sequence[Record]] = [b.records for b in self.batches]
        if self.failed:
            pieces.append([f.record for f in self.failed])
        return pieces


class Scorer:
    """Scores batches with the model serving now."""

    def __init__(
        self,
        *,
        model: Model | None,
        rollout: Rollout | None,
        featurizer: Featurizer | None,
        caller: ModelCaller,
    ) -> None:
        self._model = model
        self.rollout = rollout
        self.featurizer = featurizer
        self.caller = caller
        self._ref: tuple[Model, ModelRef] | None = None

    @property
    def model(self) -> Model:
        """The model serving now."""
        if self.rollout is not None:
            serving = self.rollout.manager.serving
            if serving is None:
                raise RuntimeError("the model is loaded when the pipeline starts")
            return serving
        assert self._model is not None
        return self._model

    @model.setter
    def model(self, model: Model) -> None:
        if self.rollout is not None:
            raise ValueError("versions come from the rollout's model source")
        self._model = model

    async def score(
        self, records: Sequence[Record], failed: list[FailedRecord], kind: BatchKind
    ) -> Scored:
        """Score ``records`` (``failed``: those already set aside from this batch)."""
        inputs: Any
        if self.featurizer is not None:
            inputs = None
            columns = columns_of(records)
            if columns is not None:
                # Features straight from the columns: no record is built.
                inputs = self.featurizer.from_columns(columns)
            bad: list[tuple[int, FeatureError]] = []
            if inputs is None:
                inputs, bad = self.featurizer.transform([r.value for r in records])
            if bad:
                skip = {i for i, _ in bad}
                failed += [
                    failure(records[i], Stage.VALIDATE, exc, exc.error_type) for i, exc in bad
                ]
                records = [r for i, r in enumerate(records) if i not in skip]
        else:
            inputs = [r.value for r in records]
        out = Scored(records=records, inputs=inputs, failed=failed)
        if not records:
            return out
        if self.rollout is not None:
            # Each version's records are a batch of their own: none mixes versions.
            out.batches, model_failed = await self.rollout.score(self.caller, records, inputs, kind)
        else:
            model = self.model  # one model for the whole batch, whatever happens meanwhile
            scored, predictions, model_failed = await self.caller.score(model, records, inputs)
            out.batches.append(
                ScoredBatch(scored, predictions, self._ref_of(model), time.time(), kind)
            )
        failed.extend(model_failed)
        return out

    def _ref_of(self, model: Model) -> ModelRef:
        """The model's reference, made once per model (not per batch)."""
        if self._ref is None or self._ref[0] is not model:
            self._ref = (model, model_ref(model))
        return self._ref[1]

    def shadow(self, scored: Scored) -> None:
        """Let a shadow version score the same records off to the side, if there is one."""
        if self.rollout is not None and scored.batches:
            self.rollout.start_shadow(scored.records, scored.inputs, scored.batches)
