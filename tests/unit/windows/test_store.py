"""Per-partition window stores: timers, session merging, sliding panes, dump and restore."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from headrace.windows.aggregators import Count, LastN
from headrace.windows.assigners import Hopping, Session, Sliding, Tumbling
from headrace.windows.features import Features
from headrace.windows.store import (
    EVERYTHING,
    NEVER,
    FixedStore,
    Schedule,
    SessionStore,
    SlidingStore,
    Store,
    make_store,
)
from headrace.windows.window import Window

FEATURES = Features({"n": (None, Count()), "seq": (None, LastN(5))})


def add(store: Store, key: Any, t: int, horizon: int = NEVER) -> bool:
    values = FEATURES.extract(t)
    assert isinstance(values, list), values
    return store.add(key, t, values, horizon)


def closed(store: Store, horizon: int) -> list[tuple[Any, Window, int, list[int]]]:
    return [
        (key, w, acc.count, FEATURES.result(acc.states)["seq"])
        for key, w, acc in store.close(horizon)
    ]


@given(st.lists(st.tuples(st.integers(-50, 50), st.integers()), max_size=40), st.integers(-60, 60))
def test_a_schedule_hands_out_items_in_time_order_then_insertion_order(
    items: list[tuple[int, int]], limit: int
) -> None:
    s: Schedule[tuple[int, int]] = Schedule()
    for i, (at, _) in enumerate(items):
        s.add(at, (at, i))
    due = s.pop_until(limit)
    assert due == sorted((at, i) for i, (at, _) in enumerate(items) if at <= limit)
    assert len(s) == len(items) - len(due)
    assert s.pop_until(limit) == []


def test_the_kind_of_store_follows_the_assigner() -> None:
    assert isinstance(make_store(Tumbling(1), FEATURES), FixedStore)
    assert isinstance(make_store(Hopping(2, 1), FEATURES), FixedStore)
    assert isinstance(make_store(Session(1), FEATURES), SessionStore)
    assert isinstance(make_store(Sliding(1), FEATURES), SlidingStore)


def test_fixed_windows_close_by_end_and_refuse_events_after() -> None:
    store = make_store(Tumbling(10e-6), FEATURES)  # 10 us windows (times here are us)
    for t in (3, 12, 5, 15):
        assert add(store, "k", t)
    assert closed(store, 9) == []
    assert closed(store, 10) == [("k", Window(0, 10), 2, [3, 5])]
    assert store.horizon == 10 and len(store) == 1
    assert not add(store, "k", 9, horizon=10)
    assert closed(store, EVERYTHING) == [("k", Window(10, 20), 2, [12, 15])]


def test_merged_away_sessions_leave_timers_that_expire_harmlessly() -> None:
    store = make_store(Session(10e-6), FEATURES)
    assert isinstance(store, SessionStore)
    for t in (0, 30, 15, 8, 22):  # three sessions, joined into one by 15, 8 and 22
        add(store, "k", t)
    assert len(store) == 1 and store.by_key == {"k": [Window(0, 40)]}
    assert len(store.schedule) > 1  # the old sessions' timers, stale now
    assert closed(store, 39) == []
    assert closed(store, 40) == [("k", Window(0, 40), 5, [0, 8, 15, 22, 30])]
    assert len(store.schedule) == 0 and store.by_key == {}


def test_a_session_event_inside_an_open_session_does_not_move_it() -> None:
    store = make_store(Session(10e-6), FEATURES)
    assert isinstance(store, SessionStore)
    add(store, "k", 0)
    add(store, "k", 9)  # extends to [0, 19)
    add(store, "k", 5)  # inside
    assert list(store.entries) == [("k", Window(0, 19))]


def test_sliding_panes_stay_until_no_window_can_need_them() -> None:
    store = make_store(Sliding(10e-6), FEATURES)
    assert isinstance(store, SlidingStore)
    for t in (0, 4, 4, 12):
        add(store, "k", t)
    assert closed(store, 5) == [
        ("k", Window(-9, 1), 1, [0]),
        ("k", Window(-5, 5), 3, [0, 4, 4]),
    ]
    assert len(store) == 3  # the pane at 0 is needed until windows ending after 9 us close
    assert closed(store, 10) == [] and len(store) == 2
    assert closed(store, 14) == [("k", Window(3, 13), 3, [4, 4, 12])]
    assert closed(store, 30) == [] and len(store) == 0 and store.times == {}


def test_dumped_rows_restore_the_same_state_with_tuple_keys() -> None:
    for assigner in (Tumbling(10e-6), Session(5e-6), Sliding(10e-6)):
        store = make_store(assigner, FEATURES)
        for i, t in enumerate((1, 4, 13, 17, 2)):
            add(store, ("user", i % 2), t)
        store.close(6)
        fresh = make_store(assigner, FEATURES)
        fresh.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(store.dump())), store.horizon)
        assert fresh.horizon == store.horizon == 6
        assert closed(fresh, EVERYTHING) == closed(store, EVERYTHING), assigner
