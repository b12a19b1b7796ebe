"""Coded-step schedules and the per-model rate/MSE profile they are derived from.

A *profile* holds, for every 1-based t, the expected single-step rate KL(q(x_{t-1}|x_t,x_0) || p) in bits/dim
(``rate_bpd[t]``, t >= 2) and the expected per-dimension MSE of the clipped x^_0 at t in [-1, 1] units
(``mse_x0[t]``). The bundled model carries a measured profile (``ddpmcodec calibrate``); other models fall back
to a closed form for Gaussian data so that every model has a deterministic schedule. Both sides derive the same
schedule from (profile, n_steps, t_end), so the file only stores those two integers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .diffusion import Schedule

FALLBACK_DATA_VARIANCE = 0.25  # per-dimension variance of pixels in [-1, 1] assumed by the fallback profile


@dataclass(frozen=True)
class Profile:
    rate_bpd: np.ndarray  # (T + 1,) float64; rate_bpd[t] = expected KL of step t -> t-1, bits/dim (0 for t < 2)
    mse_x0: np.ndarray  # (T + 1,) float64; E|clip(x^_0) - x_0|^2 per dim at t, [-1, 1] units (mse_x0[0] = 0)
    source: str  # "calibrated:<data>" or "fallback"

    def to_dict(self) -> dict:
        return {"rate_bpd": [float(f"{v:.6g}") for v in self.rate_bpd],
                "mse_x0": [float(f"{v:.6g}") for v in self.mse_x0], "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(np.asarray(d["rate_bpd"], np.float64), np.asarray(d["mse_x0"], np.float64), str(d["source"]))

    def digest(self) -> str:
        """Content hash: the schedule and prior variances depend on it, so it is part of the codec identity."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def fallback_profile(sched: Schedule) -> Profile:
    """Closed form for Gaussian data of variance v with the Bayes-optimal denoiser and 'fixedlarge' variance."""
    T = sched.T
    ab = sched.alpha_bar
    snr = ab / np.maximum(1.0 - ab, 1e-300)
    mse = FALLBACK_DATA_VARIANCE / (1.0 + FALLBACK_DATA_VARIANCE * snr)
    mse[0] = 0.0
    rate = np.zeros(T + 1)
    for t in range(2, T + 1):
        c0, _, var_q = sched.skip_posterior_coefs(t, t - 1)
        var_p = sched.prior_variance(t, t - 1, "fixedlarge")
        rate[t] = 0.5 * (np.log(var_p / var_q) + (var_q + c0 * c0 * mse[t]) / var_p - 1.0) / np.log(2.0)
    return Profile(rate, mse, "fallback")


def profile_for(model) -> Profile:
    """The model's stored calibration, or the fallback for its schedule."""
    cal = (model.metadata or {}).get("calibration")
    if cal:
        return Profile.from_dict(cal)
    return fallback_profile(Schedule(model.diffusion))


def equal_kl_schedule(profile: Profile, n_steps: int, t_end: int) -> list[int]:
    """Coded timesteps [T, ..., t_end], strictly decreasing, at most n_steps + 1 entries.

    Boundaries sit at equal quantiles of the expected cumulative rate between t_end and T, so every coded step
    carries about the same KL; near t_end, where single steps carry more than a quantile, steps are single.
    """
    T = len(profile.rate_bpd) - 1
    if not 1 <= t_end < T:
        raise ValueError(f"t_end must be in [1, {T - 1}], got {t_end}")
    n_steps = max(1, int(n_steps))
    rate = np.maximum(profile.rate_bpd, 1e-12)
    # cum[t] = expected rate of going from x_T down to x_t (steps T..t+1)
    cum = np.zeros(T + 1)
    cum[:T] = np.cumsum(rate[::-1])[::-1][1:]  # cum[t] = sum_{u=t+1}^{T} rate[u]
    total = cum[t_end]
    steps = [T]
    for k in range(1, n_steps):
        target = total * k / n_steps
        # smallest... the largest t with cum[t] >= target, i.e. first point reaching that share of the rate
        candidates = np.nonzero(cum[t_end:T] >= target)[0]
        t = int(candidates[-1]) + t_end if len(candidates) else t_end
        t = min(t, steps[-1] - 1)
        if t <= t_end:
            break
        steps.append(t)
    if steps[-1] != t_end:
        steps.append(t_end)
    return steps
