"""Time a lossless encode + decode of a real photo (default: a 512x512 crop of matplotlib's grace_hopper.jpg).

    python -m eval.photo_bench --size 512 --threads 2 --out eval/out/photo_bench.json
    python -m eval.photo_bench --size 128                                       # a quick look (16 tiles)

Reports wall seconds of encode and decode, the U-Net's share of each (the rest is the PFR search, entropy coding
and the x_0 layer), bits/dim, and checks the decode bit-exact. The photo ships with matplotlib, so this needs no
../shared data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.codec import progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.network.model_io import load_model


def photo(size: int) -> np.ndarray:
    """A size x size RGB crop of grace_hopper.jpg (512x600), resized down first when size < 512."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        im = im.convert("RGB")
        if size < min(im.size):
            scale = size / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        arr = np.asarray(im)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top: top + size, left: left + size])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.photo_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=Path("eval/out/photo_bench.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pixels = photo(args.size)
    unet = {"decode": 0.0}
    original_eps = progressive._Chain.eps

    def timed_eps(self, x, t):  # the decoder's U-Net time (the encoder reports its own)
        start = time.perf_counter()
        out = original_eps(self, x, t)
        unet["decode"] += time.perf_counter() - start
        return out

    res = encode(pixels, model, CodecSettings())
    progressive._Chain.eps = timed_eps
    try:
        start = time.perf_counter()
        out = list(decode_progressive(res.data, model, every_step=False))[-1]
        decode_s = time.perf_counter() - start
    finally:
        progressive._Chain.eps = original_eps
    exact = bool(np.array_equal(out.pixels, pixels))
    r = {"command": "python -m eval.photo_bench " + " ".join(sys.argv[1:] if argv is None else argv),
         "size": args.size, "threads": args.threads, "bytes": len(res.data),
         "bits_per_dim": 8 * len(res.data) / pixels.size, "encode_s": res.seconds,
         "encode_unet_share": res.unet_seconds / res.seconds, "decode_s": decode_s,
         "decode_unet_share": unet["decode"] / decode_s, "exact": exact,
         "windowed": bool(res.header.windowed)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1))
    print(json.dumps(r, indent=1))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
