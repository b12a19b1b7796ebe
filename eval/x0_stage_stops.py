"""Measure: what a decoder would get if it could stop inside the learned x_0 layer, after k of its 12 stages.

    python -m eval.x0_chain_features --first 4500 --count 100 --cache CACHE     # real encodes (about 4 s/image)
    python -m eval.x0_stage_stops --first 4500 --count 100 --cache CACHE

Reads the layer inputs that eval.x0_chain_features recorded from real encodes of lossless *training* originals
(x_{t_end} from the codec's chain, the mean rows of x^_0, the pixels). For each k = 0..12, the sub-pixels of stages
< k are exact, and each later stage takes the layer's predicted mean, with the residual inputs of undecoded stages
filled by their predicted means, stage by stage as a decoder would. Prints, averaged over images, the extra bpp
over the stop at t_end (the stages' exact code lengths) and the PSNR (pooled MSE, means rounded to 8 bits as a
decoder writes them), next to the PSNR of the U-Net's x^_0 at t_end. It answers whether stage stops would be worth a
format change; the codec does not offer them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.entropy import rans as entropy
from ddpmcodec.entropy.x0net import coding, layout
from ddpmcodec.entropy.x0net.integer import coder_params
from ddpmcodec.errors import InputError
from ddpmcodec.network.model_io import load_model
from eval.x0_chain_features import load_chunks


@torch.no_grad()
def stage_stop_errors(net, x_t: np.ndarray, rows: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image ((3, H, W) arrays as cached): squared error sums (STAGES + 1,) of the rounded estimate with k
    exact stages, and each stage's code length in bits (STAGES,)."""
    rows_hwc, pix_hwc = rows.transpose(1, 2, 0), pixels.transpose(1, 2, 0)
    x_t_image = torch.from_numpy(np.ascontiguousarray(x_t.transpose(1, 2, 0)))
    code = coding.prepare(net, pix_hwc, rows_hwc, x_t_image)
    real = code.real
    bits = np.array([entropy.pixel_bits(code.values[k][real[k]].numpy(), code.mean_rows[k][real[k]].numpy(),
                                        code.sigma_index[k][real[k]].numpy()) for k in range(layout.STAGES)])
    planes = coding._Planes(rows_hwc, x_t_image)
    trunk = net.trunk(planes.cond)
    truth = code.values.double()
    sq = np.zeros(layout.STAGES + 1)
    for exact in range(layout.STAGES + 1):
        residuals = torch.zeros((1, layout.STAGES) + tuple(planes.rows.shape[1:]), dtype=torch.int64)
        estimate, state = torch.zeros_like(truth), {}
        for k in range(layout.STAGES):
            mean_out, scale_out = net.stage_outputs(trunk, residuals, state, k)  # in order: it fills `state`
            if k < exact:
                estimate[k] = truth[k]
                r8 = 8 * code.values[k] - planes.rows[k] + 4
            else:
                mean_rows, _ = coder_params(mean_out[0], scale_out[0], planes.rows[k])
                estimate[k] = (mean_rows.double() / entropy.PIXEL_MEAN_GRID - 0.5).clamp(0, 255).round()
                r8 = mean_rows - planes.rows[k]  # 8 * (predicted mean) - rows + 4
            residuals[0, k] = torch.where(real[k], r8, torch.zeros_like(r8)) << layout.RESIDUAL_SHIFT
        sq[exact] = float(((estimate - truth)[real] ** 2).sum())
    return sq, bits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="eval.x0_chain_features cache folder")
    ap.add_argument("--first", type=int, default=4500, help="first training original")
    ap.add_argument("--count", type=int, default=100, help="training originals")
    ap.add_argument("--out", default=None, help="JSON file for the table")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model()
    try:
        if model.x0_layer is None:
            raise InputError("the model has no learned x_0 layer")
        data = load_chunks(model, args.first, args.first + args.count, args.cache)
        if data is None:
            raise InputError(f"no cached chain features for images {args.first}.. in {args.cache} "
                             "(run python -m eval.x0_chain_features first)")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = len(data["pixels"])
    dims = data["pixels"][0].size
    sq, bits, unet_sq = np.zeros(layout.STAGES + 1), np.zeros(layout.STAGES), 0.0
    for x_t, rows, pixels in zip(data["x_t"], data["rows"], data["pixels"]):
        s, b = stage_stop_errors(model.x0_layer.net, x_t, rows, pixels)
        sq, bits = sq + s, bits + b
        x0_hat = np.clip(np.round(rows / entropy.PIXEL_MEAN_GRID - 0.5), 0, 255)  # what the decoder writes at t_end
        unet_sq += float(((x0_hat - pixels) ** 2).sum())

    def psnr(total_sq: float) -> float | None:  # None: exact (infinite PSNR)
        return 10 * math.log10(255 ** 2 * n * dims / total_sq) if total_sq > 0 else None

    extra = np.concatenate([[0.0], np.cumsum(bits)]) / (n * dims) * 3  # bpp over the t_end stop
    rows_out = [{"exact_stages": k, "extra_bpp": float(extra[k]), "psnr_db": psnr(sq[k])}
                for k in range(layout.STAGES + 1)]
    print(f"{n} training originals from {args.first}; x^_0 at t_end: {psnr(unet_sq):.2f} dB")
    for r in rows_out:
        shown = "exact" if r["psnr_db"] is None else f"{r['psnr_db']:.2f} dB"
        print(f"  {r['exact_stages']:2d} exact stages: +{r['extra_bpp']:.3f} bpp, {shown}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"images": f"training originals {args.first}..{args.first + n - 1}",
                       "x0_hat_psnr_db": psnr(unet_sq), "stops": rows_out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
