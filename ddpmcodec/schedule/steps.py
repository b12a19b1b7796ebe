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
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from ddpmcodec.diffusion import DiffusionConfig, Schedule

FALLBACK_DATA_VARIANCE = 0.25  # per-dimension variance of pixels in [-1, 1] assumed by the fallback profile


@dataclass(frozen=True, eq=False)
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
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    # value semantics by content, so equal profiles loaded separately share cached schedules
    def __eq__(self, other) -> bool:
        return isinstance(other, Profile) and self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash(self.digest())


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


def expected_skip_kl(sched: Schedule, profile: Profile, t: int, s: int, prior: str) -> float:
    """Expected KL(q(x_s|x_t,x_0) || p(x_s|x_t)) in bits/dim when x^_0 has the profile's MSE at t."""
    c0, _, var_q = sched.skip_posterior_coefs(t, s)
    mse = float(profile.mse_x0[t])
    var_p = sched.prior_variance(t, s, prior, mse_x0=mse)
    return 0.5 * (math.log(var_p / var_q) + (var_q + c0 * c0 * mse) / var_p - 1.0) / math.log(2.0)


def _greedy(sched: Schedule, profile: Profile, t_end: int, prior: str, target: float) -> list[int]:
    """From T, each step goes to the smallest s whose expected skip KL stays <= target (at least one step)."""
    steps = [sched.T]
    while steps[-1] > t_end:
        t = steps[-1]
        lo, hi = t_end, t - 1  # find the smallest s in [lo, hi] with kl(t, s) <= target; kl grows as s falls
        if expected_skip_kl(sched, profile, t, hi, prior) > target:
            steps.append(hi)
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if expected_skip_kl(sched, profile, t, mid, prior) <= target:
                hi = mid
            else:
                lo = mid + 1
        steps.append(lo)
    return steps


@lru_cache(maxsize=64)
def _schedule_cached(profile: Profile, config, n_steps: int, t_end: int, prior: str) -> tuple[int, ...]:
    sched = Schedule(config)
    lo, hi = 1e-9, expected_skip_kl(sched, profile, sched.T, t_end, prior) + 1.0
    for _ in range(60):  # bisection on the per-step KL target: the largest target giving >= n_steps steps
        mid = math.sqrt(lo * hi)
        if len(_greedy(sched, profile, t_end, prior, mid)) - 1 > n_steps:
            lo = mid
        else:
            hi = mid
    return tuple(_greedy(sched, profile, t_end, prior, hi))


def equal_kl_schedule(profile: Profile, n_steps: int, t_end: int, prior: str = "calibrated",
                      config: DiffusionConfig = DiffusionConfig()) -> list[int]:
    """Coded timesteps [T, ..., t_end]: at most n_steps transitions of about equal expected KL.

    Uses the expected KL of each *skip* under the given prior (not the sum of single-step rates, which
    underestimates a coarse skip many times over). Near t_end single steps may exceed the target.
    """
    T = config.T
    if len(profile.rate_bpd) != T + 1:
        raise ValueError("profile does not match the diffusion config")
    if not 1 <= t_end < T:
        raise ValueError(f"t_end must be in [1, {T - 1}], got {t_end}")
    return list(_schedule_cached(profile, config, max(1, int(n_steps)), int(t_end), prior))
