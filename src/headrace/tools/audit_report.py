"""The audit's result: source positions, the report and its table, and the comparison of
position sets that makes it (no reading here: see :mod:`headrace.tools.audit_read`)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from rich.markup import escape
from rich.table import Table

Mode = Literal["exactly-once", "at-least-once"]
MODES: tuple[Mode, ...] = ("exactly-once", "at-least-once")


class Position(NamedTuple):
    """A record's source position."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class AuditReport:
    """Counts by source position, and up to ``examples`` positions of each problem.

    ``output_count`` and ``dead_letter_count`` count records read; ``dead_lettered``
    counts input positions with at least one dead letter. ``duplicated`` counts extra
    copies (an input position with three outcomes adds 2), ``duplicated_positions`` the
    positions affected. ``unexpected`` counts outputs and dead letters (copies, not
    positions) that match no input position, ``unreadable`` of which had no readable
    position at all. ``incomplete`` names partitions whose reading stopped short of the
    high watermark reported at the start. ``replayed`` counts dead letters (of those read)
    that ``headrace dead-letters replay`` re-produced to a replay topic the audit followed:
    they are no outcome of their own, their replay's output (or dead letter) is;
    ``replay_records`` counts the records read from replay topics.
    """

    input_topic: str
    input_count: int
    output_count: int
    dead_letter_count: int
    dead_lettered: int
    missing: int
    duplicated: int
    duplicated_positions: int
    unexpected: int
    unreadable: int = 0
    missing_examples: tuple[Position, ...] = ()
    duplicated_examples: tuple[Position, ...] = ()
    unexpected_examples: tuple[Position, ...] = ()
    incomplete: tuple[str, ...] = ()
    elapsed: float = 0.0
    sources: Mapping[str, str] = field(default_factory=dict)
    replayed: int = 0
    replay_records: int = 0

    def holds(self, mode: str) -> bool:
        """Whether the guarantee ``mode`` held: ``"exactly-once"`` needs no missing, no
        duplicated and no unexpected position; ``"at-least-once"`` allows duplicates.

        >>> AuditReport("t", 3, 4, 0, 0, 0, 1, 1, 0).holds("at-least-once")
        True
        >>> AuditReport("t", 3, 4, 0, 0, 0, 1, 1, 0).holds("exactly-once")
        False
        """
        if mode == "exactly-once":
            return self.missing == self.duplicated == self.unexpected == 0
        if mode == "at-least-once":
            return self.missing == self.unexpected == 0
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")

    @property
    def accounted(self) -> int:
        """Input positions with an output or a dead letter."""
        return self.input_count - self.missing

    def to_table(self) -> Table:
        """The report as a rich table: one row per count, examples beside problems."""

        def ex(positions: tuple[Position, ...], total: int) -> str:
            shown = ", ".join(str(p) for p in positions)
            more = total - len(positions)
            return escape(shown + (f", … {more:,} more" if more > 0 and shown else ""))

        title = f"audit of {self.input_topic}"
        if self.sources:
            title += " → " + ", ".join(f"{k}: {v}" for k, v in self.sources.items())
        title = escape(title)
        t = Table(title=title, title_justify="left")
        t.add_column("")
        t.add_column("count", justify="right")
        t.add_column(escape("examples (topic[partition]@offset)"), overflow="fold")
        t.add_row("input records", f"{self.input_count:,}", "")
        t.add_row("outputs read", f"{self.output_count:,}", "")
        t.add_row(
            "dead letters read",
            f"{self.dead_letter_count:,}",
            f"{self.dead_lettered:,} input positions dead-lettered",
        )
        if self.replay_records or self.replayed:
            t.add_row(
                "replayed",
                f"{self.replayed:,}",
                f"dead letters replayed, counted by their replay's outcome "
                f"({self.replay_records:,} records read from replay topics)",
            )
        t.add_row("accounted for", f"{self.accounted:,}", "")
        style = "red" if self.missing else "green"
        t.add_row(
            f"[{style}]missing[/{style}]",
            f"{self.missing:,}",
            ex(self.missing_examples, self.missing),
        )
        style = "yellow" if self.duplicated else "green"
        t.add_row(
            f"[{style}]duplicated[/{style}]",
            f"{self.duplicated:,}",
            f"{self.duplicated_positions:,} positions: "
            + ex(self.duplicated_examples, self.duplicated_positions)
            if self.duplicated
            else "",
        )
        style = "red" if self.unexpected else "green"
        note = f" ({self.unreadable:,} without a readable position)" if self.unreadable else ""
        t.add_row(
            f"[{style}]unexpected[/{style}]",
            f"{self.unexpected:,}",
            ex(self.unexpected_examples, self.unexpected) + note,
        )
        if self.incomplete:
            t.add_row(
                "[red]incomplete[/red]", str(len(self.incomplete)), ", ".join(self.incomplete)
            )
        return t

    def __rich__(self) -> Table:
        return self.to_table()


_EMPTY = np.zeros(0, dtype=np.int64)


def _as_array(offsets: Iterable[int] | None) -> np.ndarray:
    if offsets is None:
        return _EMPTY
    if isinstance(offsets, array):
        return np.frombuffer(offsets, dtype=np.int64) if len(offsets) else _EMPTY
    return np.fromiter(offsets, dtype=np.int64)


def compare(
    input_topic: str,
    inputs: Mapping[int, Iterable[int]],
    outputs: Mapping[tuple[str, int], Iterable[int]],
    dead_letters: Mapping[tuple[str, int], Iterable[int]] | None = None,
    *,
    unreadable: int = 0,
    examples: int = 10,
) -> AuditReport:
    """The report for input offsets by partition, and output and dead-letter offsets by
    ``(topic, partition)``. Works on arrays: millions of positions take well under a
    second. ``unreadable`` outputs (no position) count as unexpected.

    >>> r = compare("t", {0: [0, 1, 2]}, {("t", 0): [0, 2, 2, 9]})
    >>> r.missing, r.duplicated, r.unexpected, [str(p) for p in r.missing_examples]
    (1, 1, 1, ['t[0]@1'])
    """
    dead_letters = dead_letters or {}
    input_count = output_count = dead_count = dead_lettered = 0
    missing = duplicated = dup_positions = unexpected = 0
    missing_ex: list[Position] = []
    dup_ex: list[Position] = []
    unexpected_ex: list[Position] = []

    def take(into: list[Position], topic: str, partition: int, offsets: np.ndarray) -> None:
        room = examples - len(into)
        if room > 0:
            into.extend(Position(topic, partition, int(o)) for o in offsets[:room])

    keys = {(input_topic, p) for p in inputs} | set(outputs) | set(dead_letters)
    for topic, partition in sorted(keys):
        inp = _as_array(inputs.get(partition)) if topic == input_topic else _EMPTY
        out = _as_array(outputs.get((topic, partition)))
        dl = _as_array(dead_letters.get((topic, partition)))
        input_count += len(inp)
        output_count += len(out)
        dead_count += len(dl)
        inp = np.unique(inp)
        seen, copies = np.unique(np.concatenate([out, dl]), return_counts=True)
        known = np.isin(seen, inp, assume_unique=True)
        unexpected += int(copies[~known].sum())
        take(unexpected_ex, topic, partition, seen[~known])
        dup = known & (copies > 1)
        duplicated += int((copies[dup] - 1).sum())
        dup_positions += int(dup.sum())
        take(dup_ex, topic, partition, seen[dup])
        lost = inp[~np.isin(inp, seen, assume_unique=True)]
        missing += len(lost)
        take(missing_ex, topic, partition, lost)
        dead_lettered += int(np.isin(inp, np.unique(dl), assume_unique=True).sum())
    return AuditReport(
        input_topic=input_topic,
        input_count=input_count,
        output_count=output_count + unreadable,
        dead_letter_count=dead_count,
        dead_lettered=dead_lettered,
        missing=missing,
        duplicated=duplicated,
        duplicated_positions=dup_positions,
        unexpected=unexpected + unreadable,
        unreadable=unreadable,
        missing_examples=tuple(missing_ex),
        duplicated_examples=tuple(dup_ex),
        unexpected_examples=tuple(unexpected_ex),
    )
