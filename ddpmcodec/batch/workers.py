"""Coding one batch item in a worker (a pool process or a Ray task), and the local worker pool."""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable


from ddpmcodec.errors import CodecError, InputError, one_line
from ddpmcodec.batch.lockstep import LOCKSTEP_IMAGES
from ddpmcodec.batch.plan import DecodeJob, EncodeJob, Item, ItemResult

Progress = Callable[[int, int], None]  # progress(items finished, items in all), called in the calling process




# ---- coding one item (in a worker) -----------------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    if isinstance(exc, CodecError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return one_line(exc)


def code_item(job, item: Item, model) -> ItemResult:
    """Code one item with the loaded model and write its output; every expected failure becomes a 'failed' result."""
    start = time.perf_counter()
    try:
        res = _encode_item(job, item, model) if job.kind == "encode" else _decode_item(job, item, model)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - one item's failure must not stop the others
        res = ItemResult(item.source, item.output, "failed", _reason(exc))
    res.seconds = time.perf_counter() - start
    return res


def _encode_item(job: EncodeJob, item: Item, model) -> ItemResult:
    from ddpmcodec.atomic_write import atomic_write
    from ddpmcodec.codec.progressive import CodecSettings, encode
    from ddpmcodec.codec.stop_points import encode_within_bpp
    from ddpmcodec.images import load_image

    if item.path is not None:
        img = load_image(item.path)
        pixels, mode, note = img.pixels, img.source_mode, img.note
    else:
        pixels, mode, note = item.pixels, "RGB", ""
    h, w = pixels.shape[:2]
    if isinstance(job.settings, CodecSettings):
        if job.target_bpp is not None:  # as `ddpmcodec encode --target-bpp`
            data = encode_within_bpp(pixels, model, job.settings, job.target_bpp, source_mode=mode)[0]
        else:
            data = encode(pixels, model, job.settings, source_mode=mode, stop_at_t=job.stop_at_t,
                          target_psnr=job.target_psnr).data
    else:
        from ddpmcodec.bitsback.codec import encode_image

        data = encode_image(pixels, model, job.settings, source_mode=mode).data
    _check_not_clobbering(item.output, job.force)
    atomic_write(item.output, data)
    return ItemResult(item.source, item.output, "done", note, len(data), h * w)


def _decode_item(job: DecodeJob, item: Item, model) -> ItemResult:
    from ddpmcodec.atomic_write import atomic_write
    from ddpmcodec.container import header as container
    from ddpmcodec.images import png_bytes

    data = Path(item.path).read_bytes()
    parsed = container.unpack(data)
    if parsed.header.mode == container.MODE_BITSBACK:
        from ddpmcodec.bitsback.codec import decode_images, file_info

        if job.stop_at_t is not None or job.stop_at_bytes is not None:
            raise InputError("--stop-at needs a progressive file; this one is bits-back (lossless only)")
        n = file_info(data, model, job.limits)["images"]
        if n != 1:
            raise InputError(f"this file holds a set of {n} images; extract it with `ddpmcodec unpack FILE -o DIR`")
        out = decode_images(data, model, limits=job.limits)
        pixels, mode, note = out.images[0], out.source_modes[0], ""
    else:
        from ddpmcodec.codec.decoding import decode_progressive

        last = None
        for last in decode_progressive(data, model, stop_at_t=job.stop_at_t, stop_at_bytes=job.stop_at_bytes,
                                       every_step=False, limits=job.limits):
            pass
        if last is None:
            raise InputError("nothing to decode")
        mode = container.SOURCE_MODES[parsed.header.source_mode]
        pixels, note = last.pixels, ("" if last.t == 0 else f"x^_0 at t={last.t}")
        if not parsed.complete:
            if not job.allow_partial:
                raise InputError(f"partial file (payload cut off; it holds steps down to t={last.t}); nothing "
                                 "written: --allow-partial writes what it holds")
            note = f"partial file, decoded up to t={last.t}"
    _check_not_clobbering(item.output, job.force)
    atomic_write(item.output, png_bytes(pixels, mode))
    return ItemResult(item.source, item.output, "done", note, len(data), pixels.shape[0] * pixels.shape[1])


def _check_not_clobbering(output: str, force: bool) -> None:
    """An output that appeared while this item was coded (another run?) is not overwritten without force."""
    if not force and Path(output).exists():
        raise InputError(f"{output} appeared while coding; pass -f/--force to overwrite")


# ---- workers ---------------------------------------------------------------------------------------------------
_MODELS: dict = {}  # per worker process (pool or Ray): model key -> loaded model (or the error loading it)


def _model_key(job) -> tuple:
    """Spec, options and the file's size and mtime: a Ray worker that outlives a run never uses a stale model."""
    from ddpmcodec.network.model_io import resolve_model_path

    try:
        st = resolve_model_path(job.model_spec).stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except (CodecError, OSError):
        stamp = None
    return job.model_spec, job.allow_pickle, job.device, stamp


def worker_model(job, cache: dict | None = None):
    """The job's model, loaded once per process (or per `cache`); a load error is raised again for every item."""
    cache = _MODELS if cache is None else cache
    key = _model_key(job)
    if key not in cache:
        from ddpmcodec.network.model_io import load_model

        try:
            cache[key] = load_model(job.model_spec, device=job.device, allow_pickle=job.allow_pickle)
        except Exception as exc:  # noqa: BLE001
            cache[key] = exc
    model = cache[key]
    if isinstance(model, Exception):
        raise model
    return model


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _pooled(device: str) -> bool:
    """Whether items on this device are coded in lockstep with pooled network calls (not on the CPU)."""
    import torch

    return torch.device(device).type != "cpu"


def worker_code_many(job, items: list[Item], cache: dict | None = None,
                     on_done: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Code items in this process, results in order: on a non-CPU device all at once with their network calls
    pooled (batch.lockstep; the files are the single-image files), on the CPU one after another. on_done(i) after
    item i."""
    try:
        model = worker_model(job, cache)
    except Exception as exc:  # noqa: BLE001
        return [ItemResult(it.source, it.output, "failed", f"model: {_reason(exc)}") for it in items]
    if not _pooled(job.device):
        results = []
        for i, item in enumerate(items):
            results.append(code_item(job, item, model))
            if on_done:
                on_done(i)
        return results
    from ddpmcodec.batch.lockstep import run_lockstep

    return run_lockstep(items, lambda item, network: code_item(job, item, network), model, on_done=on_done)[0]


def run_local(job, items: list[Item], workers: int, progress: Progress | None = None,
              done_before: int = 0, total: int | None = None) -> list[ItemResult]:
    """Code the items on `workers` processes (workers=1: in this process, one torch thread); results in order."""
    import torch

    total = len(items) + done_before if total is None else total
    results: list[ItemResult | None] = [None] * len(items)
    finished = done_before
    if workers <= 1 or len(items) <= 1:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        tick = threading.Lock()

        def on_done(_i: int) -> None:
            nonlocal finished
            with tick:  # lockstep threads finish concurrently
                finished += 1
                if progress:
                    progress(finished, total)

        try:  # the model is loaded for this call only
            return worker_code_many(job, items, {}, on_done)
        finally:
            torch.set_num_threads(before)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_worker_init)
    try:
        if _pooled(job.device):  # shards coded in lockstep, each in one process (batch.lockstep)
            size = max(1, min(LOCKSTEP_IMAGES, -(-len(items) // workers)))
            shards = [list(range(lo, min(len(items), lo + size))) for lo in range(0, len(items), size)]
        else:
            shards = [[i] for i in range(len(items))]
        pending = {pool.submit(worker_code_many, job, [items[i] for i in shard]): shard for shard in shards}
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                shard = pending.pop(fut)
                try:
                    for i, res in zip(shard, fut.result()):
                        results[i] = res
                except BrokenProcessPool:
                    for i in shard:
                        results[i] = ItemResult(items[i].source, items[i].output, "failed",
                                                "worker process died (out of memory or killed); rerun to finish")
                except Exception as exc:  # noqa: BLE001
                    for i in shard:
                        results[i] = ItemResult(items[i].source, items[i].output, "failed", _reason(exc))
                finished += len(shard)
                if progress:
                    progress(finished, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


