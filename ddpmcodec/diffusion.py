"""Stateless DDPM math (Ho et al. 2020) with float64 schedules.

Conventions
-----------
* Timesteps are **1-based** as in the paper: x_0 is data, x_t for t = 1..T. The network is fed the 0-based
  index ``t - 1`` (see :func:`net_timestep`).
* Data lives in [-1, 1]: ``x = pixel / 127.5 - 1``.
* Every schedule array is float64 with ``T + 1`` entries so ``alpha_bar[0] == 1`` (x_0 is noiseless).
* Functions take torch tensors of any float dtype and shape; coefficients are cast to the tensor's dtype per use.
* Variances are per-dimension scalars (the DDPM posterior and priors are isotropic).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

LOG2 = math.log(2.0)
PRIOR_VARIANCES = ("fixedlarge", "fixedsmall", "calibrated")


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule settings; travels inside weights files and codec headers."""

    T: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        return cls(**{k: d[k] for k in ("T", "beta_schedule", "beta_start", "beta_end") if k in d})


class Schedule:
    """Float64 schedule arrays indexed by 1-based t (index 0 is x_0)."""

    def __init__(self, config: DiffusionConfig = DiffusionConfig()):
        if config.beta_schedule != "linear":
            raise ValueError(f"unsupported beta schedule {config.beta_schedule!r} (only 'linear')")
        self.config = config
        T = config.T
        betas = np.linspace(config.beta_start, config.beta_end, T, dtype=np.float64)
        self.T = T
        self.betas = np.concatenate([[0.0], betas])  # betas[t], t=1..T
        self.alphas = 1.0 - self.betas
        self.alpha_bar = np.cumprod(self.alphas)  # alpha_bar[0] = 1
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = np.sqrt(1.0 - self.alpha_bar)

    # ---- single-step quantities -------------------------------------------------------------------------------
    def posterior_variance(self, t: int) -> float:
        """beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); 0 at t = 1."""
        return self.skip_posterior_coefs(t, t - 1)[2]

    def fixedlarge_variance(self, t: int) -> float:
        """The official CIFAR-10 model variance: beta_t, except beta~_2 at t = 1 (official index 0)."""
        if t == 1:
            return self.posterior_variance(2)
        return float(self.betas[t])

    # ---- skips s < t ------------------------------------------------------------------------------------------
    def skip_posterior_coefs(self, t: int, s: int) -> tuple[float, float, float]:
        """q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var) for 0 <= s < t; returns (c0, ct, var) in float64."""
        if not 0 <= s < t <= self.T:
            raise ValueError(f"need 0 <= s < t <= T, got s={s}, t={t}")
        ab_t, ab_s = self.alpha_bar[t], self.alpha_bar[s]
        beta_ts = 1.0 - ab_t / ab_s  # variance of q(x_t | x_s)
        c0 = math.sqrt(ab_s) * beta_ts / (1.0 - ab_t)
        ct = math.sqrt(ab_t / ab_s) * (1.0 - ab_s) / (1.0 - ab_t)
        var = beta_ts * (1.0 - ab_s) / (1.0 - ab_t)
        return float(c0), float(ct), float(var)

    def prior_variance(self, t: int, s: int, kind: str = "fixedlarge", mse_x0: float | None = None) -> float:
        """Variance of the model's p(x_s | x_t) per dimension.

        'fixedlarge': 1 - alpha_bar_t / alpha_bar_s (beta_t for s = t - 1), with the official t = 1 quirk.
        'fixedsmall': the posterior variance of the skip.
        'calibrated': posterior variance + c0^2 * mse_x0, where mse_x0 = E|x^_0 - x_0|^2 per dim at t.
        """
        c0, _, var_q = self.skip_posterior_coefs(t, s)
        if kind == "fixedlarge":
            if t == 1:
                return self.fixedlarge_variance(1)
            return float(1.0 - self.alpha_bar[t] / self.alpha_bar[s])
        if kind == "fixedsmall":
            return var_q
        if kind == "calibrated":
            if mse_x0 is None:
                raise ValueError("'calibrated' prior variance needs mse_x0")
            return var_q + c0 * c0 * float(mse_x0)
        raise ValueError(f"unknown prior variance {kind!r}; choose from {PRIOR_VARIANCES}")


def net_timestep(t: int | torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """0-based timestep tensor (int64, shape (batch,)) that the network expects for 1-based t."""
    if isinstance(t, torch.Tensor):
        return (t - 1).long()
    return torch.full((batch or 1,), t - 1, dtype=torch.long)


def _c(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def q_sample(sched: Schedule, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
    return _c(sched.sqrt_alpha_bar[t], x0) * x0 + _c(sched.sqrt_one_minus_alpha_bar[t], x0) * noise


def q_sample_batched(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """q_sample with a per-example 1-based t of shape (B,)."""
    idx = t.cpu().numpy()
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a = torch.as_tensor(sched.sqrt_alpha_bar[idx], dtype=x0.dtype, device=x0.device).view(shape)
    b = torch.as_tensor(sched.sqrt_one_minus_alpha_bar[idx], dtype=x0.dtype, device=x0.device).view(shape)
    return a * x0 + b * noise


def predict_x0(sched: Schedule, xt: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """Eq. 15: x^_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    return (xt - _c(sched.sqrt_one_minus_alpha_bar[t], xt) * eps) / _c(sched.sqrt_alpha_bar[t], xt)


def posterior_mean(sched: Schedule, x0: torch.Tensor, xt: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Mean of q(x_s | x_t, x_0)."""
    c0, ct, _ = sched.skip_posterior_coefs(t, s)
    return _c(c0, x0) * x0 + _c(ct, xt) * xt


def prior_mean(sched: Schedule, xt: torch.Tensor, eps: torch.Tensor, t: int, s: int, clip: bool = False) -> torch.Tensor:
    """Mean of the model's p(x_s | x_t): the posterior mean with x_0 replaced by x^_0 (optionally clipped).

    For s = t - 1 and clip=False this equals eq. 11: (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t).
    """
    x0_hat = predict_x0(sched, xt, eps, t)
    if clip:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    return posterior_mean(sched, x0_hat, xt, t, s)


def gaussian_kl(mu_q: torch.Tensor, var_q, mu_p: torch.Tensor, var_p) -> torch.Tensor:
    """Elementwise KL(N(mu_q, var_q) || N(mu_p, var_p)) in nats; variances are scalars or tensors."""
    var_q = torch.as_tensor(var_q, dtype=mu_q.dtype, device=mu_q.device)
    var_p = torch.as_tensor(var_p, dtype=mu_q.dtype, device=mu_q.device)
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) via erfc: accurate far into the lower tail (the upper tail is handled by mirroring)."""
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def discretized_gaussian_log_probs(mean: torch.Tensor, std) -> torch.Tensor:
    """Eq. 13 decoder as exact probabilities over the 256 pixel values.

    mean: (...) in [-1, 1] units; std: scalar or broadcastable tensor (same units). Returns log-probabilities of
    shape (..., 256) in float64: bin k covers (k/127.5 - 1) +- 1/255, edge bins extend to +-inf. Each row sums to 1.
    """
    mean = mean.double().unsqueeze(-1)
    std = torch.as_tensor(std, dtype=torch.float64, device=mean.device)
    if std.dim() > 0:
        std = std.unsqueeze(-1)
    centers = torch.arange(256, dtype=torch.float64, device=mean.device) / 127.5 - 1.0
    upper = (centers + 1.0 / 255.0 - mean) / std
    lower = (centers - 1.0 / 255.0 - mean) / std
    cdf_upper = torch.where(centers >= 1.0, torch.ones_like(upper), _std_normal_cdf(upper))
    cdf_lower = torch.where(centers <= -1.0, torch.zeros_like(lower), _std_normal_cdf(lower))
    # For stability in the far tails use the mirrored difference where both CDFs are close to 1.
    mirrored = _std_normal_cdf(-lower) - _std_normal_cdf(-upper)
    mirrored = torch.where(centers >= 1.0, _std_normal_cdf(-lower), mirrored)
    mirrored = torch.where(centers <= -1.0, 1.0 - _std_normal_cdf(-upper), mirrored)
    direct = cdf_upper - cdf_lower
    probs = torch.where(lower > 0, mirrored, direct)
    return torch.log(probs.clamp_min(1e-300))


def discretized_gaussian_nll_bits(x0: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """-log2 p(x_0 | mean, std) per dimension under the eq. 13 decoder; x0 holds exact pixel levels in [-1, 1]."""
    pixels = torch.round((x0.double() + 1.0) * 127.5).long().clamp(0, 255)
    logp = discretized_gaussian_log_probs(mean, std)
    return -logp.gather(-1, pixels.unsqueeze(-1)).squeeze(-1) / LOG2


def to_model_space(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., H, W, C) or (..., C, H, W) tensor -> float32 in [-1, 1], same layout."""
    return torch.as_tensor(np.asarray(pixels)).float() / 127.5 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 pixel levels (rounded, clipped)."""
    return torch.round((x.float().clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8)
