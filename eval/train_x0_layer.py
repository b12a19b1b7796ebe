"""Train the learned x_0 layer for a diffusion model on lossless training images, quantize it and save it.

    python -m eval.train_x0_layer --t-end 10 --seconds 1200 --out ddpmcodec/models/ddpm-cifar10-ch64.x0.safetensors

Features: for every training original, `--draws` independent x_t ~ q(x_t | x_0) at t_end (seeded) and the model's
clipped x^_0 there, cached as .npz under --cache. The first --train images train, the rest are held out: the summary
reports the float and the integer network's bits/dim on them. Dev images are never used here.

With --chain-cache (features from the codec's own chain, eval.x0_chain_features), the chain examples of the first
--chain-train training originals join the training set and make up --chain-share of every batch, and the summary
adds the held-out bits/dim on the chain examples of held-out originals (those cached from --train on): the codec
codes x_0 from its chain's x_{t_end}, whose samples lean towards the prior, not from q(x_{t_end} | x_0).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.data import TRAIN_LOSSLESS_FILE, shared_data_file
from ddpmcodec.diffusion import Schedule, predict_x0, q_sample
from ddpmcodec.entropy import rans as entropy
from ddpmcodec.entropy.x0net import integer, store
from ddpmcodec.entropy.x0net.model import X0Net, X0NetConfig
from ddpmcodec.entropy.x0net.training import evaluate_float, train
from ddpmcodec.network.model_io import load_model

def make_features(model, images: np.ndarray, t: int, seed: int, batch: int = 64) -> dict[str, np.ndarray]:
    """x_t (N, 3, H, W) float32, mean rows of x^_0 (N, 3, H, W) int64, pixels (N, 3, H, W) uint8."""
    sched = Schedule(model.diffusion)
    gen = torch.Generator().manual_seed(seed)
    xts, rows = [], []
    for b in range(0, len(images), batch):
        x0 = torch.as_tensor(images[b:b + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        xt = q_sample(sched, x0, t, torch.randn(x0.shape, generator=gen))
        x0h = predict_x0(sched, xt, model.eps(xt, t), t).clamp(-1, 1)
        xts.append(xt.numpy())
        rows.append(entropy.quantize_pixel_means((x0h.double().numpy() + 1.0) * 127.5))
    return {"x_t": np.concatenate(xts), "rows": np.concatenate(rows),
            "pixels": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}


def load_features(model, images, t: int, draws: int, cache: Path) -> dict[str, torch.Tensor]:
    parts = []
    for d in range(draws):
        path = cache / f"x0feat_{model.identity[:12]}_t{t}_d{d}_n{len(images)}.npz"
        if not path.exists():
            start = time.perf_counter()
            np.savez(path, **make_features(model, images, t, seed=1000 * t + d))
            print(f"features draw {d}: {time.perf_counter() - start:.0f} s", flush=True)
        parts.append(dict(np.load(path)))
    return {k: torch.from_numpy(np.stack([p[k] for p in parts], 1)) for k in parts[0]}  # (N, draws, ...)


def flatten(data: dict[str, torch.Tensor], sel: slice) -> dict[str, torch.Tensor]:
    return {k: v[sel].flatten(0, 1) for k, v in data.items()}


def chain_data(model, cache: Path, first: int, end: int) -> dict[str, torch.Tensor] | None:
    from eval.x0_chain_features import load_chunks

    found = load_chunks(model, first, end, cache)
    return None if found is None else {k: torch.from_numpy(v) for k, v in found.items()}


def mixed(base: dict[str, torch.Tensor], extra: dict[str, torch.Tensor] | None, share: float):
    """(examples, draw weights): base and extra concatenated, extra drawn with total probability `share`."""
    if extra is None:
        return base, None
    n, m = len(base["pixels"]), len(extra["pixels"])
    data = {k: torch.cat([base[k], extra[k]]) for k in base}
    weights = torch.cat([torch.full((n,), (1.0 - share) / n), torch.full((m,), share / m)]).double()
    return data, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--t-end", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=1200.0)
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--train", type=int, default=4500, help="first N originals train, the rest are held out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate at the start of the cosine decay")
    ap.add_argument("--per-stage", type=int, default=12)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=Path("/tmp"))
    ap.add_argument("--init", type=Path, default=None, help="start from a saved layer (same config), e.g. to train on")
    ap.add_argument("--chain-cache", type=Path, default=None, help="eval.x0_chain_features' --cache")
    ap.add_argument("--chain-train", type=int, default=1000, help="chain examples of the first N originals train")
    ap.add_argument("--chain-share", type=float, default=0.5, help="share of every batch drawn from chain examples")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    images = np.load(shared_data_file(TRAIN_LOSSLESS_FILE))["images"]
    with torch.no_grad():
        data = load_features(model, images, args.t_end, args.draws, args.cache)
    tr, held = flatten(data, slice(0, args.train)), flatten(data, slice(args.train, None))
    torch.manual_seed(0)
    cfg = X0NetConfig(t_end=args.t_end, per_stage=args.per_stage, layers=args.layers)
    net = X0Net(cfg)
    if args.init is not None:
        start = store.load(args.init)
        if start.net.cfg != cfg:
            raise SystemExit(f"--init {args.init}: config {start.net.cfg} differs from {cfg}")
        integer.load_into_float(start.net, net)
    chain_tr = chain_held = None
    if args.chain_cache is not None:
        chain_tr = chain_data(model, args.chain_cache, 0, min(args.chain_train, args.train))
        chain_held = chain_data(model, args.chain_cache, args.train, len(images))
    tr, weights = mixed(tr, chain_tr, args.chain_share)
    summary = train(net, tr, args.seconds, lr=args.lr, weights=weights)
    summary["held_out_float"] = evaluate_float(net, held)
    qnet = integer.IntegerX0Net.from_float(net)
    summary["held_out_integer"] = integer.evaluate(qnet, held)
    if chain_held is not None:
        summary["held_out_chain_integer"] = integer.evaluate(qnet, chain_held)
        summary["chain_examples"] = {"train": 0 if chain_tr is None else len(chain_tr["pixels"]),
                                     "held_out": len(chain_held["pixels"]), "share": args.chain_share}
    summary.update(t_end=args.t_end, draws=args.draws, train_images=args.train, held_out=len(images) - args.train,
                   params=sum(p.numel() for p in net.parameters()), seconds=args.seconds, threads=args.threads,
                   lr=args.lr, init=args.init.name if args.init else None)
    store.save(qnet, args.out, model_identity=model.identity, summary=summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
