"""`encode --target-bpp` on dev images: PSNR and bpp of the file it writes (the best of the default file's prefix,
the deeper lossy-only chain and files with a schedule made for their stop, codec.stop_points.encode_within_bpp),
against the longest prefix of the default file alone and against the choice without stop schedules.

    python -m eval.target_bpp_bench --limit 100 --targets 0.25 0.5 1 --out docs/results/target_bpp_dev100.json

Per target: the mean bpp, PSNR and encode seconds of each (the written file timed as `encode --target-bpp` runs,
the others from one complete encode), and the mean PSNR gain of the written file over the prefix with its standard
error over images. One torch thread per process; --offset/--limit shard the images for parallel runs and
--merge joins shard JSONs.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np
import torch

from ddpmcodec.codec.progressive import ENCODER_REVISION, CodecSettings, encode
from ddpmcodec.codec.stop_points import encode_within_bpp, fit_to_bpp, stop_of
from ddpmcodec.container import header as container
from ddpmcodec.data import load_dev_set
from ddpmcodec.network.model_io import load_model

KINDS = ("prefix", "no_stop_schedule", "chosen")  # default file's prefix; encode_within_bpp progressive; auto


def measure(images, model, targets) -> list[dict]:
    """Per image and target: (bpp, PSNR, encode s) of each kind."""
    rows = []
    auto = CodecSettings()
    for img in images:
        h, w = img.shape[:2]
        start = time.perf_counter()
        full = encode(img, model, replace(auto, schedule="progressive"))
        base_s = time.perf_counter() - start
        row = {}
        for t in targets:
            data = fit_to_bpp(full.data, full.steps, model, t, h, w)
            got = {"prefix": (8 * len(data) / (h * w), stop_of(full, data).psnr, base_s)}
            start = time.perf_counter()
            data, _, stop = encode_within_bpp(img, model, replace(auto, schedule="progressive"), t, base=full)
            got["no_stop_schedule"] = (8 * len(data) / (h * w), stop.psnr, base_s + time.perf_counter() - start)
            start = time.perf_counter()  # as `encode --target-bpp` runs it: its own default encode, cut short
            data, _, stop = encode_within_bpp(img, model, auto, t)
            got["chosen"] = (8 * len(data) / (h * w), stop.psnr, time.perf_counter() - start)
            row[str(t)] = got
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    out = {}
    for t in rows[0]:
        gain = [r[t]["chosen"][1] - r[t]["prefix"][1] for r in rows]
        se = float(np.std(gain, ddof=1) / math.sqrt(len(gain))) if len(gain) > 1 else float("nan")
        out[t] = {k: {"bpp": float(np.mean([r[t][k][0] for r in rows])),
                      "psnr_db": float(np.mean([r[t][k][1] for r in rows])),
                      "encode_s": float(np.mean([r[t][k][2] for r in rows]))} for k in KINDS}
        out[t]["gain_over_prefix_db"] = float(np.mean(gain))
        out[t]["gain_se_db"] = se
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--out", default=None, help="JSON with the per-image rows and the summary")
    ap.add_argument("--merge", nargs="+", default=None, help="shard JSONs to join into --out (no encoding)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        parts = [json.load(open(p)) for p in args.merge]
        rows = [r for p in parts for r in p["rows"]]
        meta = {"images": " + ".join(p["meta"]["images"] for p in parts),
                "seconds": sum(p["meta"]["seconds"] for p in parts),
                **{k: parts[0]["meta"][k] for k in ("format", "encoder") if k in parts[0]["meta"]}}
    else:
        model = load_model(args.model)
        images = load_dev_set(args.offset + args.limit)[args.offset:]
        start = time.perf_counter()
        rows = measure(images, model, args.targets)
        meta = {"images": f"dev {args.offset}..{args.offset + len(images) - 1}",
                "seconds": time.perf_counter() - start, "torch_threads": 1,
                "format": container.VERSION, "encoder": ENCODER_REVISION}
    result = {"meta": meta, "summary": summarize(rows), "rows": rows}
    print(json.dumps({"meta": meta, "summary": result["summary"]}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
