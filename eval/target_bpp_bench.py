"""`encode --target-bpp` on dev images: PSNR and bpp of the file it writes, against the longest prefix of the default
file alone (before the deeper lossy-only chain was tried, codec.stop_points.encode_within_bpp).

    python -m eval.target_bpp_bench --limit 8 --targets 3.5 4 6
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.stop_points import encode_within_bpp, fit_to_bpp, stop_of
from ddpmcodec.data import load_dev_set
from ddpmcodec.network.model_io import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--targets", type=float, nargs="+", default=[4.0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    images = load_dev_set(args.limit)
    rows = {t: {"prefix": [], "chosen": []} for t in args.targets}
    for img in images:
        h, w = img.shape[:2]
        full = encode(img, model, CodecSettings())
        for t in args.targets:
            data = fit_to_bpp(full.data, full.steps, model, t, h, w)
            rows[t]["prefix"].append((8 * len(data) / (h * w), stop_of(full, data).psnr))
            data, _, stop = encode_within_bpp(img, model, CodecSettings(), t)
            rows[t]["chosen"].append((8 * len(data) / (h * w), stop.psnr))
    out = {str(t): {k: {"bpp": float(np.mean([b for b, _ in v])), "psnr_db": float(np.mean([p for _, p in v]))}
                    for k, v in r.items()} for t, r in rows.items()}
    print(json.dumps({"images": len(images), "targets": out}, indent=1))


if __name__ == "__main__":
    main()
