"""Measure a model's rate/MSE profile (steps.Profile) on training images and store it in the weights file.

The codec derives its coded-step schedule and its 'calibrated' prior variance from this profile, so it must be
measured on data the evaluation never sees (by default the lossless CIFAR-10 *training* originals).
Timesteps are measured on a grid (every t up to ``dense_until``, then every ``stride``-th) and interpolated
log-linearly in between; each grid point averages fresh x_t draws over the images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpmcodec.bound import evaluate_pairs, model_eps_fn
from ddpmcodec.diffusion import Schedule
from ddpmcodec.network.model_io import save_model
from ddpmcodec.schedule.steps import Profile


def timestep_grid(T: int, dense_until: int = 100, stride: int = 10) -> np.ndarray:
    grid = list(range(2, min(dense_until, T) + 1)) + list(range(dense_until + stride, T + 1, stride))
    if grid[-1] != T:
        grid.append(T)
    return np.asarray(sorted(set(grid)), dtype=np.int64)


def _interp_log(grid: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(ts, grid, np.log(np.maximum(values, 1e-30))))


def measure_profile(model, images: np.ndarray, *, data_name: str, dense_until: int = 100, stride: int = 10,
                    seed: int = 0, batch_size: int = 64, progress: bool = False) -> Profile:
    """Profile of ``model`` on uint8 images (N, H, W, 3): per-t KL (clipped x^_0, fixedlarge) and clipped-x^_0 MSE."""
    sched = Schedule(model.diffusion)
    T = sched.T
    grid = timestep_grid(T, dense_until, stride)
    n = len(images)
    x0 = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ts = np.concatenate([[1], grid])
    img = np.repeat(np.arange(n), len(ts))
    tt = np.tile(ts, n)
    res = evaluate_pairs(model_eps_fn(model), sched, x0, img, tt, tt + 7919, seed=seed, batch_size=batch_size,
                         device=model.device, progress=progress)
    term = res["term_clip"].reshape(n, len(ts)).mean(0)
    mse = res["mse_x0_clip"].reshape(n, len(ts)).mean(0)
    all_t = np.arange(T + 1)
    rate = np.zeros(T + 1)
    rate[2:] = _interp_log(grid, term[1:], all_t[2:])
    mse_x0 = np.zeros(T + 1)
    mse_x0[1:] = _interp_log(ts, mse, all_t[1:])
    return Profile(rate, mse_x0, f"calibrated:{data_name}:n={n}:grid={dense_until}/{stride}:seed={seed}")


def write_calibrated_model(model, profile: Profile, out: str | Path) -> Path:
    """Save ``model`` with the profile in its metadata under 'calibration' (weights unchanged)."""
    metadata = dict(model.metadata or {})
    metadata["calibration"] = profile.to_dict()
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    return save_model(out, state, model.unet_config, model.diffusion, model.name, metadata)
