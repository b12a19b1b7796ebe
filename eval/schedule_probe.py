"""Probe: lossy files whose schedule is made for their stop point, against the default file's prefixes.

    python -m eval.schedule_probe --first 2000 --count 24 --out docs/results/schedule_probe_train24.json

Issue lever: "a schedule that depends on the requested stop point (it travels in the header)". For every stop S and
step count N, each *training* original (../shared; dev images are never used) is encoded as a lossy file with N
equal-KL steps from T down to S (`--steps N --t-end S --stop-at t=S`, a valid, decodable file), and its PSNR is
compared with the default file's own curve at the same rate (PSNR read off that image's default stop points, linear
in log bits, as the report reads curves). The own-schedule files pay a longer header (their settings are not the
defaults); the `discounted` figures take those extra bytes off, as a format that stored the stop-dependent schedule
for free would. Prints the mean PSNR difference ± its standard error per (S, N); --out writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.data import TRAIN_LOSSLESS_FILE, shared_data_file
from ddpmcodec.errors import InputError
from ddpmcodec.network.model_io import load_model

STOPS = (440, 274, 191, 142, 99, 64, 41, 25)
STEP_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32)


def psnr_at(curve: list[tuple[float, float]], bits: float) -> float:
    """PSNR of a (bits, psnr) curve at `bits`, linear in log bits (clamped at its ends)."""
    pts = sorted((b, p) for b, p in curve if math.isfinite(p) and b > 0)
    return float(np.interp(math.log(bits), [math.log(b) for b, _ in pts], [p for _, p in pts]))


def probe_image(img: np.ndarray, model, stops, step_counts) -> dict:
    """The default file's stop points and, per (S, N), the own-schedule file's size, header and PSNR."""
    dims = img.size
    base = encode(img, model, CodecSettings())
    default = [(st.t, st.bytes_if_stopped * 8 / dims, st.psnr) for st in base.steps]
    header_default = base.steps[0].bytes_if_stopped
    own = []
    for stop in stops:
        for n in step_counts:
            start = time.perf_counter()
            res = encode(img, model, CodecSettings(n_steps=n, t_end=stop), stop_at_t=stop)
            own.append({"S": stop, "N": n, "t": res.steps[-1].t, "steps": len(res.steps) - 1,
                        "bits": len(res.data) * 8 / dims, "psnr": res.steps[-1].psnr,
                        "extra_header_bytes": res.steps[0].bytes_if_stopped - header_default,
                        "encode_s": time.perf_counter() - start})
    return {"default": default, "own": own}


def summarize(rows: list[dict], dims: int) -> list[dict]:
    """Per (S, N): mean bpp and PSNR difference to the default curve at equal rate, as charged and discounted."""
    out = []
    keys = sorted({(o["S"], o["N"]) for r in rows for o in r["own"]}, key=lambda k: (-k[0], k[1]))
    for stop, n in keys:
        diff, disc, bpp = [], [], []
        for r in rows:
            curve = [(b, p) for _, b, p in r["default"]]
            o = next(o for o in r["own"] if o["S"] == stop and o["N"] == n)
            bits_disc = o["bits"] - 8 * o["extra_header_bytes"] / dims
            diff.append(o["psnr"] - psnr_at(curve, o["bits"]))
            disc.append(o["psnr"] - psnr_at(curve, bits_disc))
            bpp.append(3 * o["bits"])
        se = (lambda v: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))
        out.append({"S": stop, "N": n, "bpp": float(np.mean(bpp)), "dpsnr": float(np.mean(diff)), "dpsnr_se": se(diff),
                    "dpsnr_discounted": float(np.mean(disc)), "dpsnr_discounted_se": se(disc)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first", type=int, default=2000, help="first training original")
    ap.add_argument("--count", type=int, default=24, help="training originals to encode")
    ap.add_argument("--stops", default=",".join(map(str, STOPS)), help="stop points t (comma-separated)")
    ap.add_argument("--steps", default=",".join(map(str, STEP_COUNTS)), help="step counts N (comma-separated)")
    ap.add_argument("--out", default=None, help="JSON file for the per-image rows and the summary")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        stops = [int(s) for s in args.stops.split(",")]
        step_counts = [int(s) for s in args.steps.split(",")]
        if not all(1 <= s < 1000 for s in stops) or not all(1 <= n <= 1000 for n in step_counts):
            raise InputError("--stops must be in 1..999 and --steps in 1..1000")
        images = np.load(shared_data_file(TRAIN_LOSSLESS_FILE))["images"][args.first: args.first + args.count]
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = load_model()
    start = time.perf_counter()
    rows = [probe_image(img, model, stops, step_counts) for img in images]
    summary = summarize(rows, images[0].size)
    for s in summary:
        print(f"S={s['S']:4d} N={s['N']:3d}  {s['bpp']:.3f} bpp  dPSNR {s['dpsnr']:+.2f} ± {s['dpsnr_se']:.2f} dB  "
              f"(extra header discounted: {s['dpsnr_discounted']:+.2f} ± {s['dpsnr_discounted_se']:.2f})")
    if args.out:
        meta = {"images": f"training originals {args.first}..{args.first + len(images) - 1}",
                "seconds": time.perf_counter() - start, "torch_threads": 1}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "summary": summary, "images": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
