"""Coding many images at once on a device: their network calls pooled into shared fixed-shape batches.

A 32x32 image asks the network for one tile per coded step; on a GPU such a call costs about as much as one of
DEVICE_GROUP tiles. So batch coding on a non-CPU device runs the images of a shard on threads, one image per
thread, each through the ordinary single-image encoder or decoder, with a :class:`PooledNetwork` in place of the
model: every thread's ``eps_reproducible`` request waits until every other running thread is waiting too, then all
of them are served by one set of DEVICE_GROUP-sample calls (``DiffusionModel.eps_device_groups``). The single-image
path evaluates its tiles in calls of the same shape, so a file does not depend on which images shared its calls
(checked on the device by eval.gpu_check), and the files are the single-image files byte for byte.

Not for the CPU: CPU kernels round differently by batch size, and the CPU path already evaluates each image's
tiles in groups of REPRODUCIBLE_GROUP on one thread each.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ddpmcodec.network.model_io import DEVICE_GROUP

LOCKSTEP_IMAGES = 64  # images coded at once per process (threads); their tiles share network calls


@dataclass
class _Request:
    x: torch.Tensor  # (B, C, H, W)
    t: int
    result: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class PoolStats:
    """What the pooling did: requests served, flushes (rounds in which every waiting request was served), samples
    sent to the device (padding included), seconds spent serving."""

    requests: int = 0
    flushes: int = 0
    samples: int = 0
    seconds: float = 0.0
    by_size: dict = field(default_factory=dict)  # requests per flush -> count


class PooledNetwork:
    """A stand-in for a DiffusionModel shared by `participants` threads: attributes are the model's, and
    ``eps_reproducible`` pools the threads' requests (see the module doc). Each participant calls :meth:`leave`
    exactly once when it has no more requests (also after an error), or the others would wait for it forever."""

    def __init__(self, model, participants: int):
        self._model = model
        self._cond = threading.Condition()
        self._active = participants
        self._pending: list[_Request] = []
        self.stats = PoolStats()

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def eps_reproducible(self, x: torch.Tensor, t: int, workers: int | None = None) -> torch.Tensor:
        """The model's eps_reproducible(x, t) for this thread, computed together with the other threads' requests:
        (B, C, H, W) float32 on x's device."""
        req = _Request(x, int(t))
        with self._cond:
            self._pending.append(req)
            if len(self._pending) >= self._active:
                self._flush()
            while not req.done:
                self._cond.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def leave(self) -> None:
        """This participant is finished: serve the others if they were only waiting for it."""
        with self._cond:
            self._active -= 1
            if self._pending and len(self._pending) >= self._active:
                self._flush()

    def _flush(self) -> None:
        """Serve every pending request (called with the lock held, when no participant can add one)."""
        pending, self._pending = self._pending, []
        start = time.perf_counter()
        groups: dict[tuple, list[_Request]] = {}
        for req in pending:  # one concatenation per t and sample shape
            groups.setdefault((req.t, tuple(req.x.shape[1:])), []).append(req)
        for (t, _), reqs in groups.items():
            try:
                x = torch.cat([r.x.to(self._model.device, torch.float32) for r in reqs])
                out = self._model.eps_device_groups(x, t)
                for r, part in zip(reqs, torch.split(out, [len(r.x) for r in reqs])):
                    r.result = part.to(r.x.device)
                self.stats.samples += -(-len(x) // DEVICE_GROUP) * DEVICE_GROUP
            except Exception as exc:  # noqa: BLE001 - every waiting thread gets the error, none hangs
                for r in reqs:
                    r.error = exc
        for req in pending:
            req.done = True
        self.stats.requests += len(pending)
        self.stats.flushes += 1
        self.stats.by_size[len(pending)] = self.stats.by_size.get(len(pending), 0) + 1
        self.stats.seconds += time.perf_counter() - start
        self._cond.notify_all()


def run_lockstep(items: list, code_one: Callable, model, width: int = LOCKSTEP_IMAGES,
                 on_done: Callable[[int], None] | None = None) -> tuple[list, PoolStats]:
    """code_one(item, network) for every item, up to `width` at a time on threads that share one PooledNetwork.
    Returns the results in order and what the pooled calls did. code_one must not raise (batch coding turns
    failures into results); on_done(i) after item i, from the coding thread. Runs with one intra-op CPU thread."""
    from ddpmcodec.parallel import single_thread

    if not items:
        return [], PoolStats()
    width = max(1, min(width, len(items)))
    network = PooledNetwork(model, width)
    results: list = [None] * len(items)
    next_item = iter(range(len(items)))
    take = threading.Lock()

    def participant() -> None:
        try:
            while True:
                with take:
                    i = next(next_item, None)
                if i is None:
                    return
                results[i] = code_one(items[i], network)
                if on_done:
                    on_done(i)
        finally:
            network.leave()

    with single_thread():
        threads = [threading.Thread(target=participant, name=f"lockstep-{k}", daemon=True) for k in range(width)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    return results, network.stats
