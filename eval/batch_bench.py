"""Images/s of batch coding against the single-image path, on the same images in one run.

    python -m eval.batch_bench --limit 64 --out eval/out/batch_bench.json      # issue 11's measurement

Single-image path: one process, the model loaded once, then `encode` and `decode_progressive` image after image
with torch using every core (what a loop over `ddpmcodec encode` / `decode` gets, without the start-up of a
process per image). Batch path: `encode_many` then `decode_many` over a folder of the same images as PNG files,
`--workers` processes (default: every core), start-up and model loads included. Every batch file must be
byte-identical to the single-image file and every decoded PNG equal to its source; the JSON has both rates, their
ratio and the load average of the machine before each path (the machines here are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ddpmcodec.batch import decode_many, encode_many
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.data import load_dev_set, load_images
from ddpmcodec.network.model_io import load_model


def single_path(model, images: np.ndarray) -> tuple[float, list[bytes]]:
    """Seconds for encode + lossless decode of every image in this process; the files."""
    files = []
    start = time.perf_counter()
    for pixels in tqdm(images, desc="single-image path", unit="img"):
        data = encode(pixels, model, CodecSettings()).data
        last = None
        for last in decode_progressive(data, model, every_step=False):
            pass
        if not np.array_equal(last.pixels, pixels):
            raise RuntimeError("single-image path: lossless round trip failed")
        files.append(data)
    return time.perf_counter() - start, files


def batch_path(model_spec: str, folder: Path, workers: int) -> tuple[float, dict]:
    """Seconds for encode_many + decode_many of the folder's PNGs; the summaries' counts."""
    start = time.perf_counter()
    enc = encode_many([folder / "png"], model_spec, CodecSettings(), out_dir=folder / "ddpm", workers=workers)
    dec = decode_many([folder / "ddpm"], model_spec, out_dir=folder / "restored", workers=workers)
    seconds = time.perf_counter() - start
    failed = [r for r in enc.results + dec.results if r.status != "done"]
    if failed:
        raise RuntimeError(f"batch path: {len(failed)} items failed, first: {failed[0].source}: {failed[0].reason}")
    return seconds, {"workers": enc.workers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.batch_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help="npz/folder [dev test set]")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=Path("eval/out/batch_bench.json"))
    args = ap.parse_args(argv)
    images = (load_images(args.images) if args.images else load_dev_set())[: args.limit]
    torch.set_num_threads(args.workers)
    model = load_model(args.model)
    load_single = os.getloadavg()[0]
    single_s, single_files = single_path(model, images)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "png").mkdir()
        names = [f"img{i:05d}" for i in range(len(images))]
        for name, pixels in zip(names, images):
            Image.fromarray(pixels).save(folder / "png" / f"{name}.png")
        load_batch = os.getloadavg()[0]
        batch_s, info = batch_path(args.model, folder, args.workers)
        for name, pixels, data in zip(names, images, single_files):
            if (folder / "ddpm" / f"{name}.ddpm").read_bytes() != data:
                raise RuntimeError(f"{name}: the batch file differs from the single-image file")
            if not np.array_equal(np.asarray(Image.open(folder / "restored" / f"{name}.png")), pixels):
                raise RuntimeError(f"{name}: the batch decode differs from the original")
    n = len(images)
    result = {"command": "python -m eval.batch_bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "images": n, "cores": os.cpu_count(), "torch_threads_single": args.workers, **info,
              "single_s": single_s, "batch_s": batch_s, "single_images_per_s": n / single_s,
              "batch_images_per_s": n / batch_s, "speedup": single_s / batch_s, "identical_files": True,
              "load_average_before": {"single": load_single, "batch": load_batch}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
