"""Time a lossless encode + decode of a real photo (default: a 512x512 crop of matplotlib's grace_hopper.jpg).

    python -m eval.photo_bench --size 512 --threads 2 --out eval/out/photo_bench.json
    python -m eval.photo_bench --size 128                                       # a quick look (16 tiles)
    python -m eval.photo_bench --size 512 --device cuda                         # on a GPU
    python -m eval.photo_bench --size 512 --steps 20                            # fewer coded steps: faster

Reports wall seconds of encode and decode, the shares of each spent in the U-Net, the PFR search and the learned x_0
layer (the rest: entropy coding, schedule, priors and container), bits/dim, and checks the decode bit-exact. The
photo ships with matplotlib, so this needs no ../shared data.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from ddpmcodec.channel import pfr_windows
from ddpmcodec.codec import progressive
from ddpmcodec.entropy.x0net import coding as learned_x0
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


# (part, owner, attribute): the encoder's learned layer runs in prepare(), the decoder's in pop()
PARTS = [("unet", progressive._Chain, "eps"), ("search", pfr_windows, "window_select"), ("x0_layer", learned_x0, "prepare"),
         ("x0_layer", learned_x0, "pop")]


@contextlib.contextmanager
def timed(seconds: dict[str, float], side: str, sync=lambda: None):
    """Wall time of the block (seconds[side + ':total']) and of the codec parts it calls (seconds[side + ':' + part],
    :data:`PARTS`: U-Net, PFR search, the learned x_0 layer (encode: prepare, decode: pop));
    the rest is schedule, prior, entropy coding and container work. sync() runs before each clock reading (a CUDA
    synchronize, so that a part's queued kernels count to it)."""
    def wrap(name, fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            sync()
            begin = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                key = f"{side}:{name}"
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - begin
        return run

    with contextlib.ExitStack() as stack:
        for name, owner, attr in PARTS:
            stack.enter_context(mock.patch.object(owner, attr, wrap(name, getattr(owner, attr))))
        begin = time.perf_counter()
        yield
        seconds[f"{side}:total"] = time.perf_counter() - begin


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.photo_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda[:N])")
    ap.add_argument("--steps", type=int, default=CodecSettings().n_steps,
                    help="coded steps (the codec's --steps): U-Net work falls with them, the file grows a little")
    ap.add_argument("--out", type=Path, default=Path("eval/out/photo_bench.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    pixels = photo(args.size)
    seconds: dict[str, float] = {}
    with timed(seconds, "encode", sync):
        res = encode(pixels, model, CodecSettings(n_steps=args.steps))
    with timed(seconds, "decode", sync):
        out = list(decode_progressive(res.data, model, every_step=False))[-1]
    exact = bool(np.array_equal(out.pixels, pixels))
    r = {"command": "python -m eval.photo_bench " + " ".join(sys.argv[1:] if argv is None else argv),
         "size": args.size, "threads": args.threads, "device": str(model.device), "n_steps": args.steps,
         "bytes": len(res.data),
         "bits_per_dim": 8 * len(res.data) / pixels.size, "exact": exact, "windowed": bool(res.header.windowed)}
    for side in ("encode", "decode"):
        total = seconds[f"{side}:total"]
        r[f"{side}_s"] = total
        r[f"{side}_share"] = {name: seconds.get(f"{side}:{name}", 0.0) / total for name, _, _ in PARTS}
        r[f"{side}_share"]["rest"] = 1.0 - sum(r[f"{side}_share"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1))
    print(json.dumps(r, indent=1))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
