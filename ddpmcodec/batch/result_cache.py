"""A small content-keyed cache of expensive results: the report's parts (bound, codec runs, classic sweeps, strip
frames), codec_bench's and the ledger's chunks, and `ddpmcodec bound --ray`'s finished tasks.

Each entry is one JSON (or npz) file named ``<kind>-<key>.<ext>`` under the cache folder, where ``key`` is a SHA-256
prefix of everything the result depends on: the part's kind, the model identity, the settings, a digest of the exact
image pixels and a code version. Changing any of them misses the cache; re-running with the same inputs only reads.
:meth:`Cache.parts` fills in the missing parts of a list of chunks, here or as Ray tasks (also used by codec_bench).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from ddpmcodec.atomic_write import atomic_write

CACHE_VERSION = 1  # bump when a cached computation changes meaning


def image_digest(images: np.ndarray) -> str:
    """16 hex chars identifying the exact uint8 pixels and shape of an image batch."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


class Cache:
    """JSON/npz entries keyed by a dict of inputs; ``enabled=False`` always recomputes (and still writes)."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, inputs: dict, ext: str = "json") -> Path:
        blob = json.dumps({"kind": kind, "version": CACHE_VERSION, **inputs}, sort_keys=True, default=str)
        return self.folder / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.{ext}"

    def get_json(self, kind: str, inputs: dict):
        p = self.path(kind, inputs)
        if self.enabled and p.is_file():
            try:
                value = json.loads(p.read_text())
            except (OSError, ValueError):
                value = None  # a damaged entry is recomputed
            if value is not None:
                self.hits += 1
                return value
        self.misses += 1
        return None

    def put_json(self, kind: str, inputs: dict, value) -> None:
        self._write(self.path(kind, inputs), json.dumps(value, default=_json_default).encode())

    def get_npz(self, kind: str, inputs: dict) -> dict | None:
        p = self.path(kind, inputs, "npz")
        if self.enabled and p.is_file():
            try:
                with np.load(p, allow_pickle=False) as z:
                    value = {k: z[k] for k in z.files}
                self.hits += 1
                return value
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
                pass  # a damaged or cut-off entry is recomputed
        self.misses += 1
        return None

    def put_npz(self, kind: str, inputs: dict, arrays: dict) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self._write(self.path(kind, inputs, "npz"), buf.getvalue())

    def parts(self, kind: str, keys: list[dict], fn, calls: list[tuple], model, *, ray: str | None = None,
              ref=None, bar=None, sizes: list[int] | None = None, local_tick=None) -> list:
        """The JSON part of each chunk (keys[j], calls[j]): read from the cache, else computed as
        fn(model, *calls[j]) here or, with ray (an address), fn(ref, *calls[j]) as Ray tasks
        (ddpmcodec.batch.ray_map; ref: a ModelRef). Each computed part is written as it arrives, so a rerun computes
        only what is missing; failed tasks end the call with one InputError line after that. bar.update(sizes[j])
        per part; parts computed here with a local_tick get fn(model, *calls[j], tick=local_tick) instead, a callback
        that advances the bar itself (finer steps than a part)."""
        parts = [self.get_json(kind, k) for k in keys]
        todo = [j for j, p in enumerate(parts) if p is None]
        sizes = sizes or [1] * len(keys)
        if bar is not None:
            bar.update(sum(n for p, n in zip(parts, sizes) if p is not None))

        def keep(j: int, part) -> None:
            from ddpmcodec.batch.ray_map import TaskFailed

            if not isinstance(part, TaskFailed):
                self.put_json(kind, keys[j], part)
                parts[j] = part
            if bar is not None and not (local_tick and ray is None):
                bar.update(sizes[j])

        if ray is None:
            for j in todo:
                keep(j, fn(model, *calls[j], **({"tick": local_tick} if local_tick else {})))
        elif todo:
            from ddpmcodec.batch.ray_map import check_failures, map_tasks

            check_failures(map_tasks(fn, [(ref, *calls[j]) for j in todo], address=ray,
                                     num_gpus=getattr(ref, "gpus", 0),
                                     on_result=lambda i, part: keep(todo[i], part)))
        return parts

    def _write(self, path: Path, data: bytes) -> None:
        """Atomic write (temporary file + rename): an interrupted run never leaves a half entry."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
