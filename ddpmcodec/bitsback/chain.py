"""Discretized diffusion chain for bits-back coding: per-level grids, the model prior p and the two posteriors q.

Latent levels j = 1..K hold x_{t_j} for the coded timesteps [T = t_0 > t_1 > ... > t_K = t_end] of
:func:`ddpmcodec.steps.equal_kl_schedule`; x_T (level 0) is shared noise, x_0 the pixels. Every latent value of a
coded (real-pixel) dimension is an integer n on the grid delta_j, x = n * delta_j, where delta_j is the smallest
of the level's three standard deviations (prior, reverse posterior, bridge) divided by 2^grid_bits: exact float64
from the schedule and the model's profile, so both sides use the same grid without sending it.

Distributions over a level's grid are Gaussians whose mean is snapped to 1/MEAN_SNAP of the grid spacing and whose
std is a schedule constant, coded with constriction's QuantizedGaussian on the offset from the rounded mean:

* q-models (popped by the encoder, pushed back by the decoder) span +-Q_RANGE std; tails fold into the edge symbols.
* the prior p spans +-P_RANGE std; an edge symbol is an escape followed by the excess in two 12-bit halves, so any
  value codes, and the leaky-quantization floor (2^-24 per symbol) stays ~1e-5 bits per symbol.

Padding dimensions of partial tiles carry no data: they follow a fixed forward process from shared noise
(x = sqrt(1 - alpha_bar_t) xi) that both sides generate, and are never coded.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np
import torch

from ddpmcodec.channel import pfr as channel
from ddpmcodec.diffusion import Schedule, posterior_mean, predict_x0
from ddpmcodec.errors import InputError
from ddpmcodec.schedule.steps import equal_kl_schedule, profile_for

_MODELS = constriction.stream.model
MEAN_SNAP = 1024  # means snapped to 1/1024 of the grid spacing (cost < 2e-6 bits/dim per level)
Q_RANGE = 9.0
P_RANGE = 12.0
MAX_HALF_WIDTH = 1 << 14
EXCESS_HALF = 1 << 12
_UNIFORM_HALF = _MODELS.Uniform(EXCESS_HALF)


class OutOfRange(Exception):
    """A symbol falls outside a q-model's alphabet (a decoder-side sign of non-reproduced network outputs)."""


def prior_kind_for(model) -> str:
    """'calibrated' when the model carries a measured profile, else 'fixedlarge' (as the progressive codec)."""
    return "calibrated" if (model.metadata or {}).get("calibration") else "fixedlarge"


def interpolation_coefs(ab: np.ndarray, lo: int, m: int, hi: int) -> tuple[float, float, float]:
    """q(x_m | x_lo, x_hi) = N(c_lo x_lo + c_hi x_hi, var) of the forward process, 0 <= lo < m < hi (float64)."""
    a_ml, a_hm, v_hl = ab[m] / ab[lo], ab[hi] / ab[m], 1.0 - ab[hi] / ab[lo]
    var = (1.0 - a_ml) * (1.0 - a_hm) / v_hl
    return float(math.sqrt(a_ml) * (1.0 - a_hm) / v_hl), float(math.sqrt(a_hm) * (1.0 - a_ml) / v_hl), float(var)


@dataclass(frozen=True)
class Level:
    """Constants of latent level j (x_{t}), reached from level j-1 (x_{t_prev})."""

    t_prev: int
    t: int
    delta: float  # grid spacing
    p_var: float  # model prior p(x_t | x_{t_prev})
    rev: tuple[float, float, float]  # q(x_t | x_{t_prev}, x_0): (c0, c_prev, var)   [BB-ANS order]
    bridge: tuple[float, float, float]  # q(x_t | x_{t_next} or x_0, x_T): (c_lo, c_T, var)   [Bit-Swap order]
    lo: int  # t_next (0: x_0) for the bridge


def make_levels(sched: Schedule, profile, steps: list[int], kind: str, grid_bits: int) -> list[Level]:
    levels = []
    for j in range(1, len(steps)):
        t_prev, t = steps[j - 1], steps[j]
        lo = steps[j + 1] if j + 1 < len(steps) else 0
        p_var = sched.prior_variance(t_prev, t, kind, mse_x0=float(profile.mse_x0[t_prev]))
        rev = sched.skip_posterior_coefs(t_prev, t)
        bridge = interpolation_coefs(sched.alpha_bar, lo, t, sched.T)
        ref = math.sqrt(min(p_var, rev[2], bridge[2]))
        levels.append(Level(t_prev, t, ref * 2.0 ** -grid_bits, p_var, rev, bridge, lo))
    return levels


@lru_cache(maxsize=256)
def _gauss(half: int):
    return _MODELS.QuantizedGaussian(-half, half)


def half_width(std_grid: float, n_std: float) -> int:
    """Alphabet half-width covering n_std standard deviations, capped at MAX_HALF_WIDTH (the prior's escape codes
    what lies beyond; q-models are checked by :func:`check_levels` to fit)."""
    return min(int(math.ceil(n_std * std_grid)) + 1, MAX_HALF_WIDTH)


def check_levels(levels: list[Level]) -> bool:
    """True when every q-model alphabet covers +-Q_RANGE std on its level's grid (else the grid is too fine)."""
    return all(int(math.ceil(Q_RANGE * math.sqrt(var) / lv.delta)) + 1 <= MAX_HALF_WIDTH
               for lv in levels for var in (lv.rev[2], lv.bridge[2]))


def _params(mu: np.ndarray, std: float, delta: float):
    if not np.isfinite(mu).all():
        raise OutOfRange("non-finite model prediction")
    scaled = mu / delta
    center = np.floor(scaled + 0.5)
    frac = np.round((scaled - center) * MEAN_SNAP) / MEAN_SNAP
    return center.astype(np.int64), frac, np.full(len(mu), std / delta)


def push_q(coder, n: np.ndarray, mu: np.ndarray, var: float, delta: float) -> None:
    center, frac, stds = _params(mu, math.sqrt(var), delta)
    half = half_width(stds[0] if len(stds) else 1.0, Q_RANGE)
    off = n - center
    if off.size and np.abs(off).max() > half:
        raise OutOfRange("latent outside its posterior's alphabet")
    coder.encode_reverse(off.astype(np.int32), _gauss(half), frac, stds)


def pop_q(coder, mu: np.ndarray, var: float, delta: float) -> np.ndarray:
    center, frac, stds = _params(mu, math.sqrt(var), delta)
    half = half_width(stds[0] if len(stds) else 1.0, Q_RANGE)
    return center + coder.decode(_gauss(half), frac, stds).astype(np.int64)


def push_p(coder, n: np.ndarray, mu: np.ndarray, var: float, delta: float) -> None:
    """Prior code with escape: |offset| >= half codes the edge symbol, then |offset| - half (24 bits)."""
    center, frac, stds = _params(mu, math.sqrt(var), delta)
    half = half_width(stds[0] if len(stds) else 1.0, P_RANGE)
    off = n - center
    esc = np.abs(off) >= half
    if esc.any():
        excess = np.abs(off[esc]) - half
        if excess.max() >= EXCESS_HALF * EXCESS_HALF:
            raise InputError("a latent lies too far from the model's prediction to code (grid too fine?)")
        # decoder pops: main symbols, then (hi, lo) per escaped dimension -> push lo, hi in reverse
        pairs = np.stack([excess // EXCESS_HALF, excess % EXCESS_HALF], 1).ravel().astype(np.int32)
        coder.encode_reverse(pairs, _UNIFORM_HALF)
    coder.encode_reverse(np.clip(off, -half, half).astype(np.int32), _gauss(half), frac, stds)


def pop_p(coder, mu: np.ndarray, var: float, delta: float) -> np.ndarray:
    center, frac, stds = _params(mu, math.sqrt(var), delta)
    half = half_width(stds[0] if len(stds) else 1.0, P_RANGE)
    off = coder.decode(_gauss(half), frac, stds).astype(np.int64)
    esc = np.abs(off) >= half
    if esc.any():
        pairs = coder.decode(_UNIFORM_HALF, 2 * int(esc.sum())).astype(np.int64).reshape(-1, 2)
        off[esc] = np.sign(off[esc]) * (half + pairs[:, 0] * EXCESS_HALF + pairs[:, 1])
    return center + off


class ImageChain:
    """One image's chain (all its tiles in one batch); identical on both sides given (model, levels, seeds)."""

    def __init__(self, model, sched: Schedule, levels: list[Level], kind: str, profile, mask: torch.Tensor,
                 image_seed: int):
        self.model, self.sched, self.levels, self.kind, self.profile = model, sched, levels, kind, profile
        self.mask = mask
        self.real = torch.nonzero(mask.flatten()).squeeze(1)
        self.pad = torch.nonzero(~mask.flatten()).squeeze(1)
        self.seed = image_seed
        self.x_T = channel.free_noise(channel.mix_seed(image_seed, 1 << 40), mask.numel()).view(mask.shape)
        self.x_T_real = self.x_T.flatten()[self.real].double().numpy()
        self.unet_seconds = 0.0

    @property
    def dims(self) -> int:
        return len(self.real)

    def latent(self, j: int, n: np.ndarray) -> torch.Tensor:
        """Network input x_{t_j} (tiles, float32) for level j >= 1 from the coded grid integers n."""
        lv = self.levels[j - 1]
        x = torch.empty(self.mask.numel(), dtype=torch.float32)
        x[self.real] = torch.from_numpy(n * lv.delta).float()
        if len(self.pad):
            xi = channel.free_noise(channel.mix_seed(self.seed, 2 << 40, j), len(self.pad))
            x[self.pad] = xi * float(self.sched.sqrt_one_minus_alpha_bar[lv.t])
        return x.view(self.mask.shape)

    def x0_hat(self, x: torch.Tensor, t: int) -> torch.Tensor:
        start = time.perf_counter()
        eps = self.model.eps_reproducible(x, t).float()
        self.unet_seconds += time.perf_counter() - start
        return predict_x0(self.sched, x, eps, t).clamp(-1.0, 1.0)

    def prior_mean(self, j: int, x_prev: torch.Tensor, x0_hat: torch.Tensor) -> np.ndarray:
        """Mean of p(x_{t_j} | x_{t_{j-1}}) on the coded dimensions, float64 (the progressive codec's prior)."""
        lv = self.levels[j - 1]
        mu = posterior_mean(self.sched, x0_hat.double(), x_prev.double(), lv.t_prev, lv.t)
        return mu.flatten()[self.real].numpy()

    def rev_mean(self, j: int, x_prev_real: np.ndarray, x0_real: np.ndarray) -> np.ndarray:
        c0, cp, _ = self.levels[j - 1].rev
        return c0 * x0_real + cp * x_prev_real

    def bridge_mean(self, j: int, x_lo_real: np.ndarray) -> np.ndarray:
        c_lo, c_T, _ = self.levels[j - 1].bridge
        return c_lo * x_lo_real + c_T * self.x_T_real


def schedule_for(model, n_steps: int, t_end: int, grid_bits: int):
    """(Schedule, profile, prior kind, coded steps, levels) for a model and the file's settings."""
    sched = Schedule(model.diffusion)
    profile = profile_for(model)
    kind = prior_kind_for(model)
    steps = equal_kl_schedule(profile, n_steps, t_end)
    return sched, profile, kind, steps, make_levels(sched, profile, steps, kind, grid_bits)
