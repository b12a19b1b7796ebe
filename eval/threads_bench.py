"""Encode/decode time of a multi-tile image against the torch thread count, and a check that the files are identical.

    python -m eval.threads_bench --threads 1 2          # a 128x256 mosaic of dev images 0-31 (32 tiles)

Tiles go through the U-Net in fixed groups on parallel one-thread workers and the PFR search splits by segment, so
the file must be byte-identical for every thread count while the time drops.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np
import torch

from ddpmcodec.codec.progressive import encode
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.data import load_dev_set
from ddpmcodec.network.model_io import load_model


def mosaic(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, h, w, 3) -> (rows*h, cols*w, 3)."""
    return np.concatenate([np.concatenate(list(images[r * cols:(r + 1) * cols]), axis=1) for r in range(rows)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    model = load_model(args.model)
    image = mosaic(load_dev_set(limit=args.rows * args.cols), args.rows, args.cols)
    results, digests = [], set()
    for n in args.threads:
        torch.set_num_threads(n)
        start = time.perf_counter()
        res = encode(image, model)
        enc = time.perf_counter() - start
        start = time.perf_counter()
        out = list(decode_progressive(res.data, model, every_step=False))[-1]
        dec = time.perf_counter() - start
        if not np.array_equal(out.pixels, image):
            raise RuntimeError(f"{n} threads: lossless round trip failed")
        digests.add(hashlib.sha256(res.data).hexdigest())
        results.append({"threads": n, "encode_s": enc, "unet_s": res.unet_seconds, "decode_s": dec,
                        "bytes": len(res.data)})
        print(f"{image.shape[1]}x{image.shape[0]}, {n} thread(s): encode {enc:.1f} s (U-Net {res.unet_seconds:.1f} s), "
              f"decode {dec:.1f} s, {len(res.data)} bytes, exact")
    print(json.dumps({"identical_files": len(digests) == 1, "runs": results}))
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
