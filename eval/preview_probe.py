"""Probe: can the decoder's preview beat x^_0(x_t) at a stop point without more bits? (issue 10; dropped levers)

    python -m eval.preview_probe --offset 100 --limit 16 --out eval/out/preview_probe.json

Two decoder-only estimators of x_0, on lossless training originals (never the dev images), PSNR over pooled MSE:
- flip: x^_0 from the mean of eps(x_t) and the mirrored eps of the mirrored x_t, with x_t ~ q(x_t|x_0) drawn
  fresh at each t (one extra U-Net call per preview);
- extrapolated: along the encoder's own coded chain, x^_0(t) + lam (x^_0(t) - x^_0(t_prev)) for a few lam (a
  margin-0 channel leans samples towards the prior; if previews lagged, this would gain).
Reports the gain in dB over the plain x^_0 per t.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from ddpmcodec.codec import progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.data import probe_images
from ddpmcodec.diffusion import Schedule, predict_x0, q_sample
from ddpmcodec.errors import InputError
from ddpmcodec.images import tiles_to_uint8
from ddpmcodec.network.model_io import load_model

FLIP_TS = (600, 400, 250, 150, 90, 50, 25, 10)
LAMS = (0.1, 0.2, 0.3, 0.5)


def _db(mse: float) -> float:
    return 10 * math.log10(255.0 ** 2 / mse)


def _mse(x: torch.Tensor, images: np.ndarray) -> float:
    """Pooled MSE of x (N, 3, H, W) in [-1, 1] against uint8 images (N, H, W, 3), as the codec rounds previews."""
    px = ((x.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).double().numpy()
    return float(((px - images.astype(np.float64)) ** 2).mean())


def flip_gain(model, images: np.ndarray, seed: int = 1) -> dict:
    sched = Schedule(model.diffusion)
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for t in FLIP_TS:
        xt = q_sample(sched, x0, t, torch.randn(x0.shape, generator=gen))
        eps = model.eps_reproducible(xt, t)
        mirrored = model.eps_reproducible(xt.flip(3), t).flip(3)
        plain = _mse(predict_x0(sched, xt, eps, t), images)
        averaged = _mse(predict_x0(sched, xt, 0.5 * (eps + mirrored), t), images)
        rows[t] = {"psnr_db": _db(plain), "flip_gain_db": _db(averaged) - _db(plain)}
    return rows


@contextlib.contextmanager
def recorded_previews():
    """While active, every x^_0 the progressive chain computes (encoder or decoder) is appended to the yielded list
    as (t, x_t, x^_0), both cloned (N, 3, R, R) tiles."""
    previews: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    original = progressive._Chain.x0_hat

    def recording(chain, x_t, t, eps):
        out = original(chain, x_t, t, eps)
        previews.append((t, x_t.clone(), out.clone()))
        return out

    with mock.patch.object(progressive._Chain, "x0_hat", recording):
        yield previews


def extrapolation_gain(model, images: np.ndarray, settings: CodecSettings = CodecSettings()) -> dict:
    sums: dict[int, dict[float, list[float]]] = {}
    with recorded_previews() as previews:
        for im in images:
            previews.clear()
            encode(im, model, settings)
            h, w = im.shape[:2]
            for (t, _, x), prev in zip(previews, [None] + [p for _, _, p in previews[:-1]]):
                for lam in (0.0,) + LAMS:
                    y = x if prev is None else (x + lam * (x - prev)).clamp(-1, 1)
                    err = (tiles_to_uint8(y, h, w).astype(np.float64) - im.astype(np.float64)) ** 2
                    sums.setdefault(t, {}).setdefault(lam, []).append(float(err.mean()))
    rows = {}
    for t, by_lam in sums.items():
        base = float(np.mean(by_lam[0.0]))
        rows[t] = {"psnr_db": _db(base), **{f"gain_db_lam_{lam:g}": _db(float(np.mean(by_lam[lam]))) - _db(base)
                                           for lam in LAMS}}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.preview_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help=".npz of images (default: ../shared's lossless training originals)")
    ap.add_argument("--offset", type=int, default=100)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=Path("eval/out/preview_probe.json"))
    args = ap.parse_args(argv)
    try:
        images = probe_images(args.images, args.offset, args.limit)
    except InputError as exc:  # no ../shared: say so and stop
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    torch.set_num_threads(1)
    model = load_model(args.model)
    result = {"command": "python -m eval.preview_probe " + " ".join(sys.argv[1:] if argv is None else argv),
              "images": len(images), "flip": flip_gain(model, images), "extrapolated": extrapolation_gain(model, images)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    best = max(max(r["flip_gain_db"] for r in result["flip"].values()),
               max(v for r in result["extrapolated"].values() for k, v in r.items() if k.startswith("gain")))
    print(f"largest gain over plain x^_0: {best:+.3f} dB ({args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
