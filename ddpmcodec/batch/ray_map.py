"""Dataset-scale evaluation on Ray: run independent calls of a module-level function as Ray tasks.

Used by `ddpmcodec bound --ray`, `python -m eval.codec_bench --ray` and `python -m eval.report --ray` (each call a
batch of work: a range of (image, t) pairs, a chunk of images). Connection, install hint and the test hook that kills
a task come from ddpmcodec.batch.ray_tasks; a task loads its model through a :class:`ModelRef` (once per Ray worker
process, ddpmcodec.batch.workers.worker_model) and runs torch on one thread. A task whose worker dies is retried
(max_retries); a call that still fails comes back as :class:`TaskFailed`, and :func:`check_failures` turns those into
one InputError line after the caller has kept (cached) everything that finished.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ddpmcodec.batch import ray_tasks
from ddpmcodec.errors import InputError, one_line

Progress = Callable[[int, int], None]  # progress(calls finished, calls in all), called in the driver


@dataclass(frozen=True)
class ModelRef:
    """A model as a task receives it: the load_model arguments, not the weights (picklable, a few bytes)."""

    spec: str
    device: str = "cpu"
    allow_pickle: bool = False

    @classmethod
    def of(cls, spec, device="cpu", allow_pickle: bool = False) -> "ModelRef":
        """A ref whose file path is absolute, so workers with another working directory find the same file."""
        from ddpmcodec.network.model_io import BUNDLED_MODEL_NAME, DEFAULT_MODEL

        if str(spec) not in (DEFAULT_MODEL, BUNDLED_MODEL_NAME):
            spec = Path(spec).expanduser().absolute()
        return cls(str(spec), str(device), allow_pickle)

    @property
    def model_spec(self) -> str:  # the attribute names workers.worker_model reads from a job
        return self.spec

    def load(self):
        """The loaded model, once per process (cached by spec, options and the file's size and mtime)."""
        from ddpmcodec.batch import workers

        return workers.worker_model(self)

    @property
    def gpus(self) -> int:
        """GPUs a task needs for this model: 1 on CUDA, else 0."""
        return int(str(self.device).startswith("cuda"))


@dataclass(frozen=True)
class TaskFailed:
    """In place of a call's result: the call failed (an exception, or its worker died max_retries + 1 times)."""

    reason: str


def run_call(fn: Callable, args: tuple, crash_marker: str | None = None):
    """The body of one Ray task: fn(*args) with one torch thread. Test hook (ray_tasks.CRASH_MARKER_ENV): the first
    task to create the marker file exits after computing its result, as a worker killed mid-task."""
    import torch

    torch.set_num_threads(1)
    out = fn(*args)
    ray_tasks.crash_once(crash_marker)
    return out


def _reason(exc: BaseException) -> str:
    """One line: the task's own exception when Ray wraps one (RayTaskError.cause), else Ray's error."""
    cause = getattr(exc, "cause", None)
    return one_line(cause if isinstance(cause, BaseException) else exc)


def map_tasks(fn: Callable, calls: Sequence[tuple], *, address: str, max_retries: int = 3,
              progress: Progress | None = None, on_result: Callable[[int, object], None] | None = None,
              num_gpus: int = 0) -> list:
    """[fn(*args) for args in calls], each call one Ray task (num_cpus=1, num_gpus), results in call order.

    fn must be a module-level function (Ray pickles it by reference). A call that still fails after max_retries
    retries of a dead worker (or raises) gives a TaskFailed. on_result(i, result or TaskFailed) runs in the driver
    as each call finishes, so a caller can keep finished work (e.g. cache it) even if the run stops later.
    """
    ray = ray_tasks.connect(address)
    if not calls:
        return []
    if num_gpus and not ray.cluster_resources().get("GPU"):
        raise InputError(f"--ray {address}: the Ray cluster has no GPU for --device cuda; use --device cpu")
    task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=max_retries)(run_call)
    marker = os.environ.get(ray_tasks.CRASH_MARKER_ENV)
    pending = {task.remote(fn, tuple(args), marker): i for i, args in enumerate(calls)}
    results: list = [None] * len(calls)
    finished = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the call raised, or retries exhausted (worker/node lost)
                    results[i] = TaskFailed(_reason(exc))
                if on_result:
                    on_result(i, results[i])
                finished += 1
                if progress:
                    progress(finished, len(calls))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return results


def check_failures(results: Sequence, max_retries: int = 3) -> None:
    """InputError with one line if any result is a TaskFailed (finished work stays where the caller kept it)."""
    failed = [r for r in results if isinstance(r, TaskFailed)]
    if failed:
        raise InputError(f"{len(failed)} of {len(results)} Ray tasks failed after up to {max_retries} retries "
                         f"(first: {failed[0].reason}); finished work is kept, rerun to retry them")
