"""Batch coding on a Ray cluster: `encode_many(..., ray=ADDRESS)` / `ddpmcodec encode ... --ray auto`.

The items of ddpmcodec.codec.batch run as Ray tasks of `batch_size` images each (one CPU, one torch thread per task);
each task loads the model itself (once per Ray worker process), codes its images with the same single-image
functions as a local run (so the files are byte-identical) and writes every output atomically. A task whose worker
dies is retried (`max_retries`); the retry skips the outputs the dead attempt already wrote. On a cluster of several
machines, the inputs, the output folder and the model (unless it is the bundled 'default') must be on storage every
node sees under the same paths.

Needs `pip install "ddpmcodec[cluster]"` (ray). Address: 'auto' (a running cluster: RAY_ADDRESS or `ray start`),
'local' (start a Ray instance on this machine for this run), or 'ray://host:10001' / 'host:6379'. If this process
already called ray.init, that Ray is used whatever the address.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ddpmcodec.batch import plan as batch
from ddpmcodec.batch import workers as batch_workers
from ddpmcodec.errors import InputError, one_line

INSTALL_HINT = 'pip install "ddpmcodec[cluster]"'
# Tests only: a path; the first task to create this file exits (os._exit) after its first image, so that the run
# must survive a task that dies mid-batch. Read by the driver and passed to the tasks.
CRASH_MARKER_ENV = "DDPMCODEC_TEST_RAY_CRASH_MARKER"


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str):
    """The ray module, initialised for `address` (InputError with one line if that fails)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        if address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError... all mean "no cluster"
        raise InputError(f"cannot start or reach Ray at {address!r}: {one_line(exc)}") from None
    return ray


def _recovered(job, item: batch.Item) -> batch.ItemResult:
    """An output found complete inside a task was written by an earlier attempt of it in this run (the driver
    leaves out outputs that were there before the run)."""
    out = Path(item.output)
    if job.kind == "encode":
        from ddpmcodec.container import header as container

        data = out.read_bytes()
        h = container.unpack(data).header
        size, pixels = len(data), h.width * h.height
    else:
        from PIL import Image

        with Image.open(out) as im:
            pixels = im.width * im.height
        size = Path(item.path).stat().st_size
    return batch.ItemResult(item.source, item.output, "done", "written by an earlier attempt of its task", size,
                            pixels)


def code_batch(job, items: list[batch.Item], crash_marker: str | None = None) -> list[batch.ItemResult]:
    """The body of one Ray task: code the items (in order on the CPU, in lockstep on a device), each written
    atomically; one result per item."""
    import torch

    torch.set_num_threads(1)
    results: list[batch.ItemResult | None] = [None] * len(items)
    todo = []
    for k, item in enumerate(items):
        if not job.force and batch.output_complete(job.kind, item.output):
            try:
                results[k] = _recovered(job, item)
                continue
            except Exception:  # noqa: BLE001 - unreadable: code it again
                pass
        todo.append(k)
    coded_first = False

    def after_item(_i: int) -> None:  # the test hook dies after the task's first coded item
        nonlocal coded_first
        if not coded_first:
            coded_first = True
            crash_once(crash_marker)

    # on a device the task's items are coded in lockstep with pooled network calls (batch.lockstep)
    coded = batch_workers.worker_code_many(job, [items[k] for k in todo], on_done=after_item)
    for k, res in zip(todo, coded):
        results[k] = res
    return results


def crash_once(crash_marker: str | None) -> None:
    """Test hook (CRASH_MARKER_ENV): the first task to create the marker file exits here, as if killed."""
    if crash_marker:
        try:
            os.close(os.open(crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(1)  # the worker process dies mid-task


def run_ray(job, items: list[batch.Item], *, address: str, batch_size: int = 8, max_retries: int = 3,
            progress=None, done_before: int = 0, total: int | None = None) -> tuple[list[batch.ItemResult], int]:
    """Code the items as Ray tasks of batch_size images; returns (results in item order, tasks run at once at
    most). A task that still fails after max_retries retries marks its images failed with the reason."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    ray = connect(address)
    if not items:
        return [], 0
    from ddpmcodec.batch.ray_map import TaskFailed, map_tasks

    total = len(items) + done_before if total is None else total
    marker = os.environ.get(CRASH_MARKER_ENV)
    groups = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    results: list[batch.ItemResult | None] = [None] * len(items)
    finished = done_before

    def keep(g: int, out) -> None:
        nonlocal finished
        if isinstance(out, TaskFailed):
            reason = f"Ray task failed after {max_retries} retries: {out.reason}"
            out = [batch.ItemResult(items[j].source, items[j].output, "failed", reason) for j in groups[g]]
        for j, res in zip(groups[g], out):
            results[j] = res
        finished += len(groups[g])
        if progress:
            progress(finished, total)

    map_tasks(code_batch, [(job, [items[j] for j in g], marker) for g in groups], address=address,
              max_retries=max_retries, on_result=keep)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return results, max(1, min(cpus, len(groups)))
