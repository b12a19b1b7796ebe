"""`ddpmcodec bound --ray`: the variational bound's (image, t) pairs evaluated as Ray tasks.

ddpmcodec.bound.variational_bound evaluates its pair list in network batches of batch_size pairs (pairs 0..,
batch_size.., ...). :func:`ray_pair_runner` cuts that list into contiguous ranges of batch_size * batches_per_task
pairs, so each task runs exactly the network batches of the local loop, on the same inputs with the same noise (keyed
by the run's image index and slot), with one torch thread. CPU kernels round differently for different thread counts,
so the per-image values are bit-identical to a local run with one torch thread (OMP_NUM_THREADS=1 or
torch.set_num_threads(1)); a local run on several threads differs from both in the last digits.

Resuming: with a ``parts_dir`` each finished task's terms are written there atomically as it returns (a
ddpmcodec.batch.result_cache), keyed by everything they depend on (model identity, precision, seed, batch size, the
schedule, the task's pixels and pairs), so a rerun after a failed or interrupted run submits only the missing
ranges; run_bound deletes the folder once its JSON is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ddpmcodec.batch import ray_tasks
from ddpmcodec.batch.ray_map import ModelRef, check_failures, map_tasks
from ddpmcodec.batch.result_cache import Cache, image_digest
from ddpmcodec.bound import TERM_KEYS, evaluate_pairs, model_eps_fn
from ddpmcodec.diffusion import Schedule
from ddpmcodec.errors import InputError


def pairs_task(ref: ModelRef, precision: str, sched: Schedule, first_image: int, x0: torch.Tensor, image: np.ndarray,
               t: np.ndarray, slot: np.ndarray, seed: int, batch_size: int) -> dict[str, np.ndarray]:
    """One task: :func:`evaluate_pairs` on a range of pairs with the worker's model (x0: images first_image..)."""
    model = ref.load()
    return evaluate_pairs(model_eps_fn(model, precision), sched, x0, image, t, slot, seed=seed, batch_size=batch_size,
                          device=model.device, first_image=first_image)


PARTS_VERSION = 1  # bump when evaluate_pairs' terms change meaning
KIND = "bound-pairs"  # the result_cache kind of a task's terms


def _digest(*arrays) -> str:
    """A digest of the exact values and shapes of these arrays (numpy or torch)."""
    return "-".join(image_digest(np.asarray(a)) for a in arrays)


def ray_pair_runner(ref: ModelRef, address: str, *, precision: str = "fp32", batches_per_task: int = 16,
                    parts_dir: str | Path | None = None, model_identity: str = ""):
    """A ``pair_runner`` for variational_bound that evaluates the pairs with ``ref``'s model as Ray tasks of
    batches_per_task network batches (the eps_fn it is given is not used). Connects now: no Ray or no cluster is
    one InputError before any work; a task that still fails after its retries is one InputError after the run,
    and with parts_dir the finished tasks are kept there for a rerun (module docstring), keyed by model_identity
    (the loaded model's, network.model_io) among the rest."""
    if batches_per_task < 1:
        raise InputError(f"--ray-batches must be at least 1, got {batches_per_task}")
    ray_tasks.connect(address)

    def run(eps_fn, sched: Schedule, x0_all: torch.Tensor, image: np.ndarray, t: np.ndarray, slot: np.ndarray, *,
            seed: int = 0, batch_size: int = 64, device=None, progress: bool = False) -> dict[str, np.ndarray]:
        step = batch_size * batches_per_task  # a multiple of batch_size: the local loop's batches, unchanged
        store = Cache(parts_dir) if parts_dir is not None else None
        calls, keys, sizes = [], [], []
        for a in range(0, len(t), step):
            sl = slice(a, a + step)
            lo, hi = int(image[sl].min()), int(image[sl].max()) + 1
            x0 = x0_all[lo:hi].cpu().clone()  # a copy: a pickled view would carry the whole tensor
            calls.append((ref, precision, sched, lo, x0, image[sl], t[sl], slot[sl], seed, batch_size))
            sizes.append(len(t[sl]))
            keys.append({"model": model_identity, "terms": PARTS_VERSION, "precision": precision, "seed": seed,
                         "batch_size": batch_size, "first_image": lo,
                         "data": _digest(sched.betas, x0.float(), image[sl], t[sl], slot[sl])})
        parts = [store.get_npz(KIND, k) if store else None for k in keys]
        parts = [p if p is not None and set(p) == set(TERM_KEYS) else None for p in parts]
        todo = [j for j, p in enumerate(parts) if p is None]

        def keep(i: int, part) -> None:
            j = todo[i]
            parts[j] = part
            if store and isinstance(part, dict):
                store.put_npz(KIND, keys[j], part)
            bar.update(sizes[j])

        with tqdm(total=len(t), disable=not progress, unit="eval", desc="bound (Ray)", dynamic_ncols=True) as bar:
            bar.update(sum(n for n, p in zip(sizes, parts) if p is not None))
            map_tasks(pairs_task, [calls[j] for j in todo], address=address, num_gpus=ref.gpus, on_result=keep)
        check_failures(parts)
        return {k: np.concatenate([p[k] for p in parts]) for k in TERM_KEYS}

    return run
