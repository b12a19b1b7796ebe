"""The x_0 layers alone on unbiased draws: exact bits/dim of the model's learned layer and of the per-file fitted
pixelmodel (parameters included) for x_0 given x_t ~ q(x_t | x_0) at the layer's t_end.

    python -m eval.x0_layer_eval --limit 24            # dev images 0-23, the bundled model and its layer

The codec's x_t comes from its channel-simulated chain instead (slightly biased); eval.codec_bench measures that.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ddpmcodec.data import load_dev_set, load_images
from ddpmcodec.entropy import pixelmodel
from ddpmcodec.entropy.x0net import coding
from ddpmcodec.network.model_io import load_model
from eval.train_x0_layer import make_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", default=None, help="folder or .npz (default: the 500 dev test images)")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if model.x0_layer is None:
        raise SystemExit(f"{args.model} has no learned x_0 layer")
    images = (load_images(args.images, model.unet_config.resolution, limit=args.limit) if args.images
              else load_dev_set(args.limit))
    t = model.x0_layer.t_end
    with torch.no_grad():
        feats = make_features(model, images, t, seed=args.seed)
    learned, classic, start = [], [], time.perf_counter()
    for x_t, rows, pixels in zip(feats["x_t"], feats["rows"], images):
        rows_hwc, x_t_img = rows.transpose(1, 2, 0), torch.from_numpy(x_t).permute(1, 2, 0)
        learned.append(coding.code_length_bits(model.x0_layer.net, pixels, rows_hwc, x_t_img))
        classic.append(pixelmodel.code_length_bits(pixels, rows_hwc, pixelmodel.fit(pixels, rows_hwc)))
    dims = images[0].size
    out = {"t_end": t, "images": len(images), "learned_bpd": float(np.mean(learned)) / dims,
           "classic_bpd": float(np.mean(classic)) / dims,
           "auto_bpd": float(np.mean(np.minimum(learned, classic))) / dims,
           "seconds": time.perf_counter() - start, "layer": model.x0_layer.identity,
           "trained": model.x0_layer.summary}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
