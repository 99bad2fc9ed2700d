"""``pipeline.read_ahead``: the next batch is read in a background thread while the engine runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from refdiff_cli.upscale.pipeline import read_ahead


def test_results_come_in_order_and_items_are_taken_in_the_callers_thread() -> None:
    caller = threading.get_ident()
    taken_in: list[int] = []
    worked_in: set[int] = set()

    def items() -> Iterator[int]:
        for i in range(7):
            taken_in.append(threading.get_ident())
            yield i

    def square(i: int) -> int:
        worked_in.add(threading.get_ident())
        return i * i

    assert list(read_ahead(square, items())) == [i * i for i in range(7)]
    assert set(taken_in) == {caller}
    assert len(worked_in) == 1 and caller not in worked_in


def test_it_reads_exactly_one_item_ahead() -> None:
    started: list[int] = []

    def record(i: int) -> int:
        started.append(i)
        return i

    def settled(count: int) -> list[int]:
        """``started`` once it holds ``count`` items, and a moment more to run further ahead."""
        deadline = time.monotonic() + 10
        while len(started) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        return list(started)

    results = read_ahead(record, range(5))
    assert next(results) == 0
    assert settled(2) == [0, 1]
    assert next(results) == 1
    assert settled(3) == [0, 1, 2]
    results.close()


def test_an_error_is_raised_where_its_result_is_taken() -> None:
    def fail_on_two(i: int) -> int:
        if i == 2:
            raise ValueError("item 2 is bad")
        return i

    results = read_ahead(fail_on_two, range(5))
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(ValueError, match="item 2 is bad"):
        next(results)


def test_the_worker_uses_the_callers_torch_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        counts = list(read_ahead(lambda _: torch.get_num_threads(), range(2)))
    finally:
        torch.set_num_threads(before)
    assert counts == [1, 1]
