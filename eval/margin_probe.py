"""Probe: extra PFR candidates (a margin) on the last coded steps only, where the chain's bias reaches the x_0 layer.

    python -m eval.margin_probe --last 3 --margin 4 --first 0 --count 24

Encodes lossless *training* originals (../shared; dev images are never used) twice with one thread: with the
defaults, and with 2^(budget + margin) candidates on the last --last steps, their indices coded under the truncated
Zipf law of that many candidates. The probe's files are sized exactly as such a format would write them, but they are
not decodable (the header does not say which steps had the margin), so this is a measurement, not a codec option.
Prints paired means: file bits/dim, the x_0 layer's bits/dim and the chain's ideal bits/dim, with standard errors,
and the encode time of each; --out writes them as JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from unittest import mock

import numpy as np
import torch

from ddpmcodec.codec import progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.data import TRAIN_LOSSLESS_FILE, shared_data_file
from ddpmcodec.entropy import rans as entropy
from ddpmcodec.errors import InputError
from ddpmcodec.network.model_io import load_model


@contextlib.contextmanager
def tail_margin(last: int, margin: int, n_steps: int):
    """Within the block, encode() searches and codes its last `last` steps with 2^margin times the candidates."""
    state = {"k": 0}
    select = progressive.pfr_windows.window_select

    def candidates(k: int, base: int) -> int:
        return base << margin if k >= n_steps - last else base

    def counting_select(seed, layout, delta, ratio, n_candidates, workers=1):
        k, state["k"] = state["k"], state["k"] + 1
        return select(seed, layout, delta, ratio, candidates(k, n_candidates), workers=workers)

    def push_steps(chain, coder, symbols):
        marks = [coder.num_valid_bits()]
        for k in reversed(range(len(symbols))):
            q, idx, pred = symbols[k]
            law = entropy.zipf_model(candidates(k, chain.n_candidates),
                                     entropy.zipf_kl_for(q, len(idx), chain.h.budget_bits))
            coder.encode_reverse(np.asarray(idx, np.int32), law)
            entropy.push_log_kl(coder, np.array([q]), np.array([pred]))
            marks.append(coder.num_valid_bits())
        return marks[::-1]

    def reset_then_encode(*a, **kw):
        state["k"] = 0
        return encode(*a, **kw)

    with mock.patch.object(progressive.pfr_windows, "window_select", counting_select), \
            mock.patch.object(progressive._Chain, "push_steps", push_steps):
        yield reset_then_encode


def measure(encode_fn, model, images: np.ndarray, settings: CodecSettings) -> list[dict]:
    """Per image: file bits/dim, x_0 layer bits/dim, chain ideal bits/dim, encode seconds."""
    rows = []
    for img in images:
        start = time.perf_counter()
        res = encode_fn(img, model, settings)
        dims = img.size
        rows.append({"file": len(res.data) * 8 / dims, "x0_layer": res.steps[-1].ideal_bits / dims,
                     "chain": sum(s.ideal_bits for s in res.steps[:-1]) / dims,
                     "encode_s": time.perf_counter() - start})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--last", type=int, default=3, help="steps at the end of the chain that get the margin")
    ap.add_argument("--margin", type=int, default=4, help="extra candidate bits on those steps")
    ap.add_argument("--first", type=int, default=0, help="first training original")
    ap.add_argument("--count", type=int, default=24, help="training originals to encode")
    ap.add_argument("--out", default=None, help="JSON file for the per-image rows and the summary")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = CodecSettings()
    try:
        if not (1 <= args.last <= settings.n_steps and 1 <= args.margin <= 8):
            raise InputError(f"--last must be 1..{settings.n_steps} and --margin 1..8")
        images = np.load(shared_data_file(TRAIN_LOSSLESS_FILE))["images"][args.first: args.first + args.count]
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = load_model()
    base = measure(encode, model, images, settings)
    with tail_margin(args.last, args.margin, settings.n_steps) as probe_encode:
        probe = measure(probe_encode, model, images, settings)
    summary = {"images": f"training originals {args.first}..{args.first + len(images) - 1}", "last": args.last,
               "margin": args.margin}
    for key in ("file", "x0_layer", "chain", "encode_s"):
        d = np.array([p[key] - b[key] for b, p in zip(base, probe)])
        summary[key] = {"default": float(np.mean([b[key] for b in base])),
                        "probe": float(np.mean([p[key] for p in probe])), "diff": float(d.mean()),
                        "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")}
        print(f"{key:9s} default {summary[key]['default']:.4f}  probe {summary[key]['probe']:.4f}  "
              f"diff {summary[key]['diff']:+.4f} ± {summary[key]['se']:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "default": base, "probe": probe}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
