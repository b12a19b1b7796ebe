"""Training examples for the x_0 layer taken from the codec's own chain, not from q(x_t | x_0).

    python -m eval.x0_chain_features --first 0 --count 800 --cache /work/scratch/x0chain

The codec reaches x_{t_end} through channel-simulated steps whose samples lean towards the prior, so its x_{t_end}
is not distributed as q(x_{t_end} | x_0), and the layer, trained on q's samples, pays more on it (notes in
docs/x0_layer.md). This runs the real encoder (default settings, one thread) on lossless *training* originals and
records, per image, what `_push_x0_layer` receives: x_{t_end} (3, H, W) float32, the mean rows of x^_0 (3, H, W)
int64 and the pixels (3, H, W) uint8 -- the feature format of eval.train_x0_layer. Written in chunks of --chunk
images (`chain_<model>_t<t_end>_<first>.npz`), so an interrupted run resumes (one run at a time per cache); dev
images are never used.

    python -m eval.x0_chain_features --first 4500 --count 25 --cache CACHE --compare CACHE/x0feat_..._t10_d0_n5085.npz
prints how the chain's x_{t_end} and x^_0 differ from q's on the same originals.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from ddpmcodec.codec import progressive
from ddpmcodec.codec.progressive import CodecSettings, default_t_end, encode
from ddpmcodec.data import TRAIN_LOSSLESS_FILE, shared_data_file
from ddpmcodec.images import from_tiles
from ddpmcodec.entropy import pixelmodel
from ddpmcodec.entropy import rans as entropy
from ddpmcodec.network.model_io import load_model


def chain_end(model, pixels: np.ndarray, settings: CodecSettings) -> dict[str, np.ndarray]:
    """One lossless encode; the x_0 layer's inputs: x_t (3, H, W) float32, rows (3, H, W) int64, pixels uint8."""
    seen = {}
    original = progressive._push_x0_layer

    def record(coder, model_, h, choice, pixels_, x0_hat, x_t):
        seen["x_t"] = from_tiles(x_t, h.height, h.width).permute(2, 0, 1).float().numpy()
        seen["rows"] = pixelmodel.mean_rows(x0_hat, h.height, h.width).transpose(2, 0, 1)
        return original(coder, model_, h, choice, pixels_, x0_hat, x_t)

    with mock.patch.object(progressive, "_push_x0_layer", record):
        encode(pixels, model, settings)
    return {"x_t": seen["x_t"], "rows": np.ascontiguousarray(seen["rows"]),
            "pixels": np.ascontiguousarray(pixels.transpose(2, 0, 1))}


def chunk_path(cache: Path, model, t_end: int, first: int) -> Path:
    return cache / f"chain_{model.identity[:12]}_t{t_end}_{first:05d}.npz"


def make_chunks(model, images: np.ndarray, first: int, count: int, chunk: int, cache: Path) -> None:
    """Encode images first..first+count-1 (chunk-aligned) and save each chunk that is not cached yet."""
    t_end = default_t_end(model)
    settings = CodecSettings()
    for lo in range(first, first + count, chunk):
        path = chunk_path(cache, model, t_end, lo)
        if path.exists():
            continue
        start = time.perf_counter()
        rows = [chain_end(model, images[i], settings) for i in range(lo, min(lo + chunk, len(images)))]
        parts = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **parts)
        os.replace(tmp, path)
        print(f"{path.name}: {len(rows)} images, {time.perf_counter() - start:.0f} s", flush=True)


def load_chunks(model, first: int, end: int, cache: Path, chunk: int = 25) -> dict[str, np.ndarray] | None:
    """The cached chunks inside [first, end), concatenated (None if there are none)."""
    t_end = default_t_end(model)
    found = [np.load(p) for lo in range(first, end, chunk) if (p := chunk_path(cache, model, t_end, lo)).exists()]
    if not found:
        return None
    return {k: np.concatenate([f[k] for f in found]) for k in found[0].files}


def compare(model, chain: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per source (chain, q): var(x_t - sqrt(ab) x_0) / (1 - ab) at t_end and the RMSE of x^_0 (grey levels)."""
    from ddpmcodec.diffusion import Schedule

    ab = float(Schedule(model.diffusion).alpha_bar[default_t_end(model)])
    out = {}
    for name, d in (("chain", chain), ("q", q)):
        x0 = d["pixels"].astype(np.float64) / 127.5 - 1.0
        x0_hat = (d["rows"] / entropy.PIXEL_MEAN_GRID - 0.5) / 127.5 - 1.0  # the row's mean
        out[name] = {"residual_var_ratio": float((d["x_t"] - np.sqrt(ab) * x0).var() / (1.0 - ab)),
                     "x0_hat_rmse": float(np.sqrt(((x0_hat - x0) ** 2).mean()) * 127.5)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--first", type=int, default=0, help="first training original")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--cache", type=Path, default=Path("/tmp"))
    ap.add_argument("--compare", type=Path, default=None, metavar="NPZ",
                    help="print the cached chain examples' statistics next to these q features (eval.train_x0_layer's "
                         "x0feat_*.npz) for the same originals, and exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.first % args.chunk:
        raise SystemExit("--first must be a multiple of --chunk")
    args.cache.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    if args.compare is not None:
        chain = load_chunks(model, args.first, args.first + args.count, args.cache, args.chunk)
        if chain is None:
            raise SystemExit("no cached chain examples in that range")
        q_all = np.load(args.compare)
        q = {k: q_all[k][args.first: args.first + len(chain["pixels"])] for k in ("x_t", "rows", "pixels")}
        if not np.array_equal(q["pixels"], chain["pixels"]):
            raise SystemExit("--compare holds other images")
        print(json.dumps(compare(model, chain, q), indent=1))
        return
    images = np.load(shared_data_file(TRAIN_LOSSLESS_FILE))["images"]
    make_chunks(model, images, args.first, args.count, args.chunk, args.cache)


if __name__ == "__main__":
    main()
