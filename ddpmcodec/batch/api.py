"""Entry points of batch coding: encode_many and decode_many (see ddpmcodec.batch.plan for the rules)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from ddpmcodec.batch.plan import (BatchSummary, DecodeJob, EncodeJob, Item, ItemResult, _prepare_out_dir, check_names,
                                  expand_ddpm_files, expand_sources, output_complete)
from ddpmcodec.batch.workers import run_local

Progress = Callable[[int, int], None]  # progress(items finished, items in all), called in the calling process





# ---- entry points ----------------------------------------------------------------------------------------------
def _run(job, items: list[Item], out_dir: Path, workers: int, ray: str | None, ray_batch: int,
         progress: Progress | None) -> BatchSummary:
    from ddpmcodec.network.model_io import resolve_model_path

    start = time.perf_counter()
    if ray is not None:
        from ddpmcodec.batch import ray_tasks as cluster

        cluster.import_ray()  # not installed: one error before anything is written
    check_names(items)
    resolve_model_path(job.model_spec)  # a missing model is one error, not one per item
    _prepare_out_dir(out_dir)
    results: list[ItemResult | None] = [None] * len(items)
    todo: list[int] = []
    for i, it in enumerate(items):
        if not job.force and output_complete(job.kind, it.output):
            results[i] = ItemResult(it.source, it.output, "skipped", "output exists")
        elif not job.force and Path(it.output).exists():
            results[i] = ItemResult(it.source, it.output, "failed",
                                    f"{it.output} exists but is not a complete .ddpm file; pass -f/--force to "
                                    "overwrite")
        else:
            todo.append(i)
    skipped = len(items) - len(todo)
    if progress and skipped:
        progress(skipped, len(items))
    if ray is not None:
        from ddpmcodec.batch import ray_tasks as cluster

        coded, workers = cluster.run_ray(job, [items[i] for i in todo], address=ray, batch_size=ray_batch,
                                         progress=progress, done_before=skipped, total=len(items))
    else:
        workers = max(1, min(workers, len(todo)))
        coded = run_local(job, [items[i] for i in todo], workers, progress, skipped, len(items))
    for i, res in zip(todo, coded):
        results[i] = res
    return BatchSummary(results, time.perf_counter() - start, workers)


def encode_many(sources: Sequence[str | Path], model_spec: str, settings=None, *, out_dir: str | Path,
                workers: int = 1, force: bool = False, stop_at_t: int = 0, target_psnr: float | None = None,
                target_bpp: float | None = None, allow_pickle: bool = False, device: str = "cpu",
                ray: str | None = None, ray_batch: int = 8, progress: Progress | None = None) -> BatchSummary:
    """Encode image files, folders and datasets into out_dir/<stem>.ddpm (see the module doc).

    settings: CodecSettings (default) or BitsBackSettings; stop_at_t / target_psnr / target_bpp as in the CLI
    (one at most). workers: processes (one torch thread each). ray: None (local), or 'auto', 'local' or a Ray
    address: the items run as Ray tasks of ray_batch images (ddpmcodec.batch.ray_tasks). progress(k, n) per finished
    item.
    Raises InputError for bad sources, clashing output names or a missing model; per-item failures are in the
    summary. Worker processes are started with 'spawn', so a script that calls this with workers > 1 must do so
    under `if __name__ == "__main__":`.
    """
    from ddpmcodec.codec.progressive import CodecSettings

    out_dir = Path(out_dir)
    job = EncodeJob(str(model_spec), settings if settings is not None else CodecSettings(), stop_at_t or 0,
                    target_psnr, target_bpp, force, allow_pickle, device)
    return _run(job, expand_sources(sources, out_dir), out_dir, workers, ray, ray_batch, progress)


def decode_many(files: Sequence[str | Path], model_spec: str, *, out_dir: str | Path, workers: int = 1,
                force: bool = False, stop_at_t: int | None = None, stop_at_bytes: int | None = None,
                allow_partial: bool = False, limits=None, allow_pickle: bool = False, device: str = "cpu",
                ray: str | None = None, ray_batch: int = 8, progress: Progress | None = None) -> BatchSummary:
    """Decode .ddpm files (and folders of them) into out_dir/<stem>.png; options as `ddpmcodec decode`.

    A partial file fails (nothing written) unless allow_partial, which writes what it holds.
    """
    out_dir = Path(out_dir)
    job = DecodeJob(str(model_spec), stop_at_t, stop_at_bytes, allow_partial, limits, force, allow_pickle, device)
    return _run(job, expand_ddpm_files(files, out_dir), out_dir, workers, ray, ray_batch, progress)
