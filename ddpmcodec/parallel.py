"""Run independent pieces of torch CPU work on threads, each with one intra-op thread.

One-thread kernels give the same numbers on any machine, and the threads share the cores instead of
oversubscribing them (n workers x n OpenMP threads). The caller's torch thread setting is restored afterwards.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def intra_op_threads(n: int):
    """Run the block with n (>= 1) intra-op torch threads; the caller's setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_thread():
    """Run the block with one intra-op torch thread (restored afterwards): the codecs' many small tensor ops lose more
    to thread wake-ups than they gain (a 32x32 encode took 16.6 s with 2 threads, 5.6 s with 1), and one thread gives
    the same numbers on every machine. Parallel work inside goes through map_one_thread_each's workers."""
    return intra_op_threads(1)


def map_one_thread_each(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """[fn(x) for x in items], on up to `workers` threads that each run torch with one intra-op thread."""
    workers = max(1, min(workers, len(items)))
    with intra_op_threads(1):
        if workers == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(fn, items))
