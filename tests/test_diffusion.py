"""DDPM math against independent closed forms and brute-force numerics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmcodec.diffusion import (DiffusionConfig, Schedule, discretized_gaussian_log_probs,
                                 discretized_gaussian_nll_bits, gaussian_kl, posterior_mean, predict_x0, prior_mean,
                                 q_sample)

S = Schedule()


def test_schedule_values_match_the_paper():
    assert S.betas.dtype == np.float64 and len(S.betas) == 1001
    assert S.betas[1] == pytest.approx(1e-4) and S.betas[1000] == pytest.approx(0.02)
    assert S.alpha_bar[0] == 1.0
    assert S.alpha_bar[1000] == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)), rel=1e-12)
    assert S.alpha_bar[1000] < 5e-5  # L_T is ~1e-5 bits/dim


def test_fixedlarge_quirk_at_t1():
    # official: log-variance of index 0 is log(posterior_variance[1]) = beta~ at 1-based t = 2
    expected = S.betas[2] * (1 - S.alpha_bar[1]) / (1 - S.alpha_bar[2])
    assert S.fixedlarge_variance(1) == pytest.approx(expected, rel=1e-12)
    assert math.sqrt(S.fixedlarge_variance(1)) * 127.5 == pytest.approx(0.94, abs=0.01)  # ~0.94 grey levels
    assert S.fixedlarge_variance(500) == S.betas[500]
    assert S.prior_variance(500, 499, "fixedlarge") == pytest.approx(S.betas[500], rel=1e-12)


@pytest.mark.parametrize("t", [2, 10, 500, 1000])
def test_posterior_is_the_bayes_product(t):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): multiply the two Gaussians in x_{t-1} directly."""
    x0, xt = 0.3, -0.7
    a_t, ab_prev = S.alphas[t], S.alpha_bar[t - 1]
    # q(x_t | x_{t-1}) as a Gaussian in x_{t-1}: mean xt / sqrt(a_t), variance beta_t / a_t
    prec = a_t / S.betas[t] + 1.0 / (1.0 - ab_prev)
    mean = (xt * math.sqrt(a_t) / S.betas[t] + x0 * math.sqrt(ab_prev) / (1.0 - ab_prev)) / prec
    c0, ct, var = S.skip_posterior_coefs(t, t - 1)
    assert c0 * x0 + ct * xt == pytest.approx(mean, rel=1e-10)
    assert var == pytest.approx(1.0 / prec, rel=1e-10)
    assert var == pytest.approx(S.posterior_variance(t), rel=1e-12)


def test_skip_posterior_equals_composed_single_steps():
    """q(x_s|x_t,x_0) for s < t by Monte-Carlo: run the single-step posteriors t -> s and compare moments."""
    t, s = 40, 30
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n,), 0.4, dtype=torch.float64)
    xt = torch.full((n,), -0.2, dtype=torch.float64)
    x = xt
    for u in range(t, s, -1):
        c0, cu, var = S.skip_posterior_coefs(u, u - 1)
        x = c0 * x0 + cu * x + math.sqrt(var) * torch.randn(n, generator=g, dtype=torch.float64)
    c0, ct, var = S.skip_posterior_coefs(t, s)
    assert float(x.mean()) == pytest.approx(c0 * 0.4 + ct * -0.2, abs=4 * math.sqrt(var / n))
    assert float(x.var()) == pytest.approx(var, rel=0.02)


def test_skip_prior_large_variance_is_the_forward_skip():
    assert S.prior_variance(100, 50, "fixedlarge") == pytest.approx(1 - S.alpha_bar[100] / S.alpha_bar[50])
    c0, _, var_q = S.skip_posterior_coefs(100, 50)
    assert S.prior_variance(100, 50, "calibrated", mse_x0=0.01) == pytest.approx(var_q + c0 * c0 * 0.01)
    assert S.prior_variance(100, 50, "fixedsmall") == var_q


def test_prior_mean_is_eq11_without_clipping():
    g = torch.Generator().manual_seed(1)
    xt, eps = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    for t in (2, 300, 1000):
        eq11 = (xt - S.betas[t] / math.sqrt(1 - S.alpha_bar[t]) * eps) / math.sqrt(S.alphas[t])
        torch.testing.assert_close(prior_mean(S, xt, eps, t, t - 1), eq11, rtol=1e-10, atol=1e-12)


def test_predict_x0_inverts_q_sample():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(64, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(64, generator=g, dtype=torch.float64)
    xt = q_sample(S, x0, 700, noise)
    torch.testing.assert_close(predict_x0(S, xt, noise, 700), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(posterior_mean(S, x0, xt, 700, 0), x0, rtol=1e-9, atol=1e-9)


def test_gaussian_kl_against_monte_carlo():
    g = torch.Generator().manual_seed(3)
    mq, vq, mp, vp = 0.3, 0.04, -0.1, 0.09
    x = mq + math.sqrt(vq) * torch.randn(400_000, generator=g, dtype=torch.float64)
    logq = -0.5 * (x - mq) ** 2 / vq - 0.5 * math.log(vq)
    logp = -0.5 * (x - mp) ** 2 / vp - 0.5 * math.log(vp)
    mc = float((logq - logp).mean())
    exact = float(gaussian_kl(torch.tensor([mq], dtype=torch.float64), vq, torch.tensor([mp], dtype=torch.float64), vp))
    assert exact == pytest.approx(mc, abs=3e-3)
    assert float(gaussian_kl(torch.zeros(1), 1.0, torch.zeros(1), 1.0)) == 0.0


@pytest.mark.parametrize("mean", [-1.5, -1.0, -0.31, 0.0, 0.5, 1.0, 1.2])
@pytest.mark.parametrize("std", [1e-4, 0.0074, 0.05, 2.0])
def test_discretized_decoder_is_a_distribution(mean, std):
    logp = discretized_gaussian_log_probs(torch.tensor([mean]), std)
    assert logp.shape == (1, 256) and logp.dtype == torch.float64
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_discretized_decoder_bins_by_quadrature():
    mean, std = 0.1234, 0.02
    logp = discretized_gaussian_log_probs(torch.tensor([mean], dtype=torch.float64), std)[0]
    for k in (100, 141, 142, 200, 0, 255):
        c = k / 127.5 - 1
        lo = -math.inf if k == 0 else c - 1 / 255
        hi = math.inf if k == 255 else c + 1 / 255
        cdf = lambda v: 0.5 * math.erfc(-(v - mean) / (std * math.sqrt(2)))  # noqa: E731
        sf = lambda v: 0.5 * math.erfc((v - mean) / (std * math.sqrt(2)))  # noqa: E731
        if c > mean:  # upper tail: difference of survival functions avoids cancellation
            expected = (1.0 if lo == -math.inf else sf(lo)) - (0.0 if hi == math.inf else sf(hi))
        else:
            expected = (1.0 if hi == math.inf else cdf(hi)) - (0.0 if lo == -math.inf else cdf(lo))
        rel = 1e-9 if expected > 1e-12 else 1e-4  # torch's float64 erfc is ~1e-6 relative 20 sigma out
        assert math.exp(float(logp[k])) == pytest.approx(expected, rel=rel, abs=2e-300)  # log floor
    x0 = torch.tensor([141 / 127.5 - 1])
    nll = discretized_gaussian_nll_bits(x0, torch.tensor([mean], dtype=torch.float64), std)
    assert float(nll) == pytest.approx(-float(logp[141]) / math.log(2), rel=1e-12)


def test_config_round_trip():
    cfg = DiffusionConfig(T=20, beta_end=0.05)
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg
    assert Schedule(cfg).T == 20
    with pytest.raises(ValueError):
        Schedule(DiffusionConfig(beta_schedule="cosine"))
