"""The HyperLogLog sketch behind DistinctCount."""

from __future__ import annotations

import pytest

from headrace.windows import hll


@pytest.mark.parametrize("n", [0, 1, 10, 300, 3000, 30_000])
def test_estimates_are_within_a_few_standard_errors(n: int) -> None:
    regs = hll.registers(12)
    for i in range(n):
        hll.insert(regs, hll.hash64(i))
    # 1.04 / sqrt(4096) = 1.6 %; linear counting is tighter still for small n.
    assert hll.estimate(regs) == pytest.approx(n, rel=0.05, abs=1)


def test_duplicates_do_not_count() -> None:
    regs = hll.registers(10)
    for _ in range(5):
        for i in range(500):
            hll.insert(regs, hll.hash64(f"k{i}"))
    assert hll.estimate(regs) == pytest.approx(500, rel=0.1)


def test_merging_is_the_sketch_of_the_union() -> None:
    a, b, both = hll.registers(8), hll.registers(8), hll.registers(8)
    for i in range(2000):
        h = hll.hash64(i)
        hll.insert(a if i % 3 else b, h)
        hll.insert(both, h)
    hll.merge_into(a, bytes(b))
    assert a == both


def test_sketches_of_different_sizes_do_not_merge() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        hll.merge_into(hll.registers(8), hll.registers(9))


@pytest.mark.parametrize("p", [3, 17])
def test_precision_is_bounded(p: int) -> None:
    with pytest.raises(ValueError, match="precision"):
        hll.registers(p)


def test_hashes_are_stable_and_tell_types_apart() -> None:
    # Fixed across processes and runs (a snapshot restored elsewhere must agree).
    assert hll.hash64("user-1") == 0x8E161DC870CC8C80
    assert len({hll.hash64(v) for v in (1, 1.0, True, "1", b"1", [1])}) == 6


def test_the_all_zero_remainder_gets_the_largest_rank() -> None:
    regs = hll.registers(4)
    hll.insert(regs, 0)  # index 0, the remaining 60 bits all zero
    assert regs[0] == 61
    hll.insert(regs, (1 << 63) | 1)  # index 8, first 1 bit at the end of the remainder
    assert regs[8] == 60
