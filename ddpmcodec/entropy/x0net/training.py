"""Training of the learned x_0 layer (float; the codec runs its integer form, integer.py).

Examples are (x_t, x^_0, x_0) triples: x_t ~ q(x_t | x_0) at the layer's t_end and x^_0 the clipped prediction of
the diffusion model at x_t, made from lossless training images only (eval/train_x0_layer.py). The loss is the code
length in bits per sub-pixel under the same discretized Gaussian the coder uses (entropy.rans.pixel_probs).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from ddpmcodec.entropy import rans as entropy
from ddpmcodec.entropy.x0net import layout
from ddpmcodec.entropy.x0net.integer import batch_integer_inputs
from ddpmcodec.entropy.x0net.model import MEAN_UNIT, X0Net

SIGMA_INDEX_MAX = entropy.SIGMA_TABLE_SIZE - 1


def batch_inputs(x_t: torch.Tensor, rows: torch.Tensor, pixels: torch.Tensor):
    """Float network inputs from a batch: x_t (B, 3, H, W) float, rows (B, 3, H, W) int64 (mean rows of x^_0),
    pixels (B, 3, H, W) uint8, H and W even. Returns cond (B, 24, h, w) and residuals (float32: the codec's integer
    inputs at 2^-10, integer.batch_integer_inputs), rows and pixels as stages (B, STAGES, h, w) float64."""
    cond, residuals, rows_st, pixels_st = batch_integer_inputs(x_t, rows, pixels)
    scale = float(1 << layout.ACT_BITS)
    return ((cond.double() / scale).float(), (residuals.double() / scale).float(), rows_st.double(),
            pixels_st.double())


def gaussian_bits(pixels: torch.Tensor, mean_rows: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Bits per sub-pixel (same shape) of pixel values under pixel_probs' law: N(mean, sigma^2) over
    [k - 1/2, k + 1/2] with the edge bins open, mean = rows / 8 - 1/2 clamped to [0, 255], sigma = 0.25 * 2^log_scale
    (log_scale clamped to the coder's table). Differentiable; float64."""
    mean = (mean_rows.double() / entropy.PIXEL_MEAN_GRID - 0.5).clamp(0.0, 255.0)
    sigma = 0.25 * torch.exp2(log_scale.double().clamp(0.0, SIGMA_INDEX_MAX / 8.0))
    lo = (pixels - 0.5 - mean) / sigma
    hi = (pixels + 0.5 - mean) / sigma
    flip = lo > 0  # right of the mean: use the upper tail for accuracy
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    cdf_a = torch.where(torch.where(flip, pixels == 255, pixels == 0), torch.zeros_like(a), torch.special.ndtr(a))
    cdf_b = torch.where(torch.where(flip, pixels == 0, pixels == 255), torch.ones_like(b), torch.special.ndtr(b))
    return -torch.log2((cdf_b - cdf_a).clamp_min(1e-12))


def float_bits(net: X0Net, batch) -> torch.Tensor:
    """Bits per sub-pixel (B, STAGES, h, w) of a batch from :func:`batch_inputs` under the float network."""
    cond, residuals, rows, pixels = batch
    mean, log_scale = net(cond, residuals)
    return gaussian_bits(pixels, rows + mean.double() * MEAN_UNIT, log_scale)


def train(net: X0Net, data: dict[str, torch.Tensor], seconds: float, batch_size: int = 32, lr: float = 2e-3,
          seed: int = 0, log: Callable[[str], None] = print, weights: torch.Tensor | None = None) -> dict:
    """Adam with cosine decay over a wall-clock budget; horizontal flips. data: x_t (N, 3, H, W) float32, rows
    (N, 3, H, W) int64, pixels (N, 3, H, W) uint8; weights: (N,) relative probability of drawing each example
    (default uniform). Returns a summary (steps, epochs, last loss)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = len(data["pixels"])
    start, step, losses = time.perf_counter(), 0, []
    net.train()
    while (elapsed := time.perf_counter() - start) < seconds:
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed / seconds)))
        if weights is None:
            idx = torch.randint(0, n, (batch_size,), generator=gen)
        else:
            idx = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
        parts = [data["x_t"][idx], data["rows"][idx], data["pixels"][idx]]
        if bool(torch.rand((), generator=gen) < 0.5):
            parts = [p.flip(-1) for p in parts]
        loss = float_bits(net, batch_inputs(*parts)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 200 == 0:
            log(f"step {step}  {time.perf_counter() - start:.0f} s  bits/dim {np.mean(losses[-200:]):.4f}")
    net.eval()
    return {"steps": step, "epochs": step * batch_size / n, "last_bits": float(np.mean(losses[-200:] or [0.0]))}


@torch.no_grad()
def evaluate_float(net: X0Net, data: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Mean bits per sub-pixel of the float network on data (no parameter bits: the weights are fixed)."""
    total, count = 0.0, 0
    for i in range(0, len(data["pixels"]), batch_size):
        bits = float_bits(net, batch_inputs(data["x_t"][i:i + batch_size], data["rows"][i:i + batch_size],
                                            data["pixels"][i:i + batch_size]))
        total, count = total + float(bits.sum()), count + bits.numel()
    return total / count
