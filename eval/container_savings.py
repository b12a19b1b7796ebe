"""What a container layout costs at every stop of the default file: the size of each valid cut file (what `truncate`
and `encode --stop-at ... --schedule progressive` write) under the current format and under an older layout, from one
default encode per image (the cut files are re-pushed without the network).

    python -m eval.container_savings --images train --offset 2000 --limit 16 --old-version 6

Per stop t: the mean bytes of the cut files in both layouts and the mean saving, plus the mean over all stops.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from ddpmcodec.codec.decoding import StreamReader
from ddpmcodec.codec.progressive import CodecSettings, encode, truncated_file
from ddpmcodec.container import header as container
from ddpmcodec.data import load_images, shared_data_file
from ddpmcodec.network.model_io import load_model

SETS = {"train": "cifar10-train-lossless.npz", "dev": "cifar10-test-dev.npz"}


def cut_sizes(data: bytes, model, old_version: int) -> tuple[list[int], list[int], list[int]]:
    """(t, bytes now, bytes in the old layout) of every lossy cut of one file."""
    reader = StreamReader(data, model)
    for _ in range(reader.parsed.header.steps_present):
        reader.pop_step()
    chain = reader.chain
    now_h, ts, now, old = chain.h, [], [], []
    for k in range(now_h.steps_present + 1):
        ts.append(chain.steps[k])
        now.append(len(truncated_file(chain, reader.symbols[:k])))
        chain.h = replace(now_h, version=old_version)
        old.append(len(truncated_file(chain, reader.symbols[:k])))
        chain.h = now_h
    return ts, now, old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", choices=sorted(SETS), default="train")
    ap.add_argument("--offset", type=int, default=2000)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--old-version", type=int, default=6, choices=(5, 6),
                    help="an older layout with the same defaults to compare with")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    images = load_images(shared_data_file(SETS[args.images]))[args.offset: args.offset + args.limit]
    start = time.perf_counter()
    per_t: dict[int, list[tuple[int, int]]] = {}
    for img in images:
        ts, now, old = cut_sizes(encode(img, model, CodecSettings()).data, model, args.old_version)
        for t, a, b in zip(ts, now, old):
            per_t.setdefault(t, []).append((a, b))
    rows = [{"t": t, "bytes": float(np.mean([a for a, _ in v])), "bytes_old": float(np.mean([b for _, b in v])),
             "saving": float(np.mean([b - a for a, b in v]))} for t, v in sorted(per_t.items(), reverse=True)]
    coded = [r for r in rows if r["t"] < max(per_t)]  # x_T alone is the header only
    result = {"meta": {"images": f"{args.images} {args.offset}..{args.offset + len(images) - 1}",
                       "format": container.VERSION, "old_version": args.old_version,
                       "seconds": time.perf_counter() - start},
              "mean_saving_bytes": float(np.mean([r["saving"] for r in coded])), "per_stop": rows}
    for r in rows:
        print(f"t={r['t']:>4}  {r['bytes']:8.1f} B  (v{args.old_version} {r['bytes_old']:8.1f})  "
              f"saving {r['saving']:.2f}")
    print(f"mean saving over coded stops: {result['mean_saving_bytes']:.2f} bytes")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
