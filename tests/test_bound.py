"""The variational bound: terms against independent computations, the Monte-Carlo estimator, outputs and CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ddpmcodec import bound as B
from ddpmcodec.diffusion import (DiffusionConfig, Schedule, discretized_gaussian_nll_bits, gaussian_kl,
                                 posterior_mean, prior_mean, q_sample)
from ddpmcodec.errors import InputError
from ddpmcodec.testing import make_tiny_model

SMALL = DiffusionConfig(T=20, beta_start=1e-3, beta_end=0.2)


def _images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _x0(images):
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.fixture
def small_model(tmp_path):
    return make_tiny_model(tmp_path, resolution=8, seed=0, diffusion=SMALL)


def test_tables_fixedlarge_and_t1_quirk():
    sched = Schedule()
    tab = B.term_tables(sched)
    b = sched.betas
    assert tab["var_p"][1] == pytest.approx(b[2] * (1 - sched.alpha_bar[1]) / (1 - sched.alpha_bar[2]), rel=1e-12)
    np.testing.assert_allclose(tab["var_p"][2:], b[2:], rtol=1e-9)
    assert math.log(tab["var_p"][1]) == pytest.approx(math.log(5.45e-5), abs=0.01)  # notes §1


def test_pair_terms_match_eq11_and_bruteforce_kl():
    """Closed-form KL term == Monte-Carlo of log q - log p, with p's mean from eq. 11 computed independently."""
    sched = Schedule()
    tab = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in B.term_tables(sched).items()}
    g = torch.Generator().manual_seed(0)
    t = 7
    x0 = torch.rand((1, 3, 2, 2), generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = q_sample(sched, x0, t, noise)
    eps = noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = B.pair_terms(tab, x0, xt, eps, noise, torch.tensor([t]))
    beta, ab = sched.betas[t], sched.alpha_bar[t]
    mu_p = (xt - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)  # eq. 11
    torch.testing.assert_close(mu_p, prior_mean(sched, xt, eps, t, t - 1), rtol=1e-10, atol=1e-12)
    mu_q = posterior_mean(sched, x0, xt, t, t - 1)
    var_q = beta * (1 - sched.alpha_bar[t - 1]) / (1 - ab)
    q = torch.distributions.Normal(mu_q, math.sqrt(var_q))
    p = torch.distributions.Normal(mu_p, math.sqrt(beta))
    samples = mu_q + math.sqrt(var_q) * torch.randn((200_000,) + tuple(x0.shape), generator=g, dtype=torch.float64)
    mc = (q.log_prob(samples) - p.log_prob(samples)).mean() / math.log(2)  # mean over samples and dims
    assert float(out["term"]) == pytest.approx(float(mc), rel=0.02)
    x0_hat = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    assert float(out["mse_x0"]) == pytest.approx(float((x0_hat - x0).pow(2).mean()), rel=1e-9)
    assert float(out["eps_mse"]) == pytest.approx(float((eps - noise).pow(2).mean()), rel=1e-9)


def test_decoder_term_matches_bin_integral():
    sched = Schedule()
    tab = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in B.term_tables(sched).items()}
    pixels = torch.tensor([[0, 1, 128, 254, 255, 77]], dtype=torch.float64).view(1, 1, 2, 3)
    x0 = pixels / 127.5 - 1
    eps = torch.full_like(x0, 0.8)
    noise = torch.zeros_like(x0)
    xt = q_sample(sched, x0, 1, noise)
    out = B.pair_terms(tab, x0, xt, eps, noise, torch.tensor([1]))
    mean = ((xt - sched.sqrt_one_minus_alpha_bar[1] * eps) / sched.sqrt_alpha_bar[1]).clamp(-1, 1)
    std = math.sqrt(sched.posterior_variance(2))
    normal = torch.distributions.Normal(mean.flatten(), std)
    lo = torch.where(pixels.flatten() == 0, torch.tensor(-1e9, dtype=torch.float64), x0.flatten() - 1 / 255)
    hi = torch.where(pixels.flatten() == 255, torch.tensor(1e9, dtype=torch.float64), x0.flatten() + 1 / 255)
    nll = -torch.log(normal.cdf(hi) - normal.cdf(lo)).mean() / math.log(2)
    assert float(out["term"]) == pytest.approx(float(nll), rel=1e-6)
    assert float(out["term_clip"]) == float(out["term"])


def _reference_bound(model, images, seed):
    """Independent per-image, per-t loop with diffusion.py's scalar-t functions and the same noise."""
    sched = Schedule(model.diffusion)
    x0 = _x0(images)
    rates, dists = [], []
    for i in range(len(images)):
        x = x0[i: i + 1]
        prior = gaussian_kl(sched.sqrt_alpha_bar[-1] * x.double(), 1 - sched.alpha_bar[-1],
                            torch.zeros_like(x, dtype=torch.float64), 1.0).mean() / math.log(2)
        total = float(prior)
        for t in range(sched.T, 0, -1):
            noise = B.pair_noise(seed, i, t, tuple(x.shape[1:]))[None]
            xt = q_sample(sched, x, t, noise)
            eps = model.eps(xt, t).double()
            if t == 1:
                mean = prior_mean(sched, xt.double(), eps, 1, 0, clip=True)
                std = math.sqrt(sched.fixedlarge_variance(1))
                dists.append(float(discretized_gaussian_nll_bits(x, mean, std).mean()))
            else:
                mu_q = posterior_mean(sched, x.double(), xt.double(), t, t - 1)
                mu_p = prior_mean(sched, xt.double(), eps, t, t - 1)
                kl = gaussian_kl(mu_q, sched.posterior_variance(t), mu_p, sched.fixedlarge_variance(t))
                total += float(kl.mean()) / math.log(2)
        rates.append(total)
    return np.array(rates), np.array(dists)


def test_exact_bound_matches_reference_loop_and_is_batch_invariant(small_model):
    images = _images(3)
    res = B.model_bound(small_model, images, seed=5, batch_size=16)
    rate, dist = _reference_bound(small_model, images, seed=5)
    np.testing.assert_allclose(res.rate, rate, rtol=1e-5)
    np.testing.assert_allclose(res.distortion, dist, rtol=1e-6)
    again = B.model_bound(small_model, images, seed=5, batch_size=7)
    np.testing.assert_allclose(again.rate, res.rate, rtol=1e-5)
    s = res.summary()
    assert s["total_bpd"] == pytest.approx(s["rate_bpd"] + s["distortion_bpd"])
    assert res.per_t_count.tolist() == [3] * SMALL.T
    cum = res.cumulative_rate()
    assert cum[0] == pytest.approx(s["rate_bpd"]) and cum[-1] == pytest.approx(s["prior_bpd"])
    assert [r["t"] for r in res.table4(steps=(1, 10, 20))] == [20, 11, 1]


def _oracle(x0_image, sched, offset):
    """eps_fn that knows x_0 (all images equal it): true noise + offset(t), so every term is deterministic."""
    sab = torch.as_tensor(sched.sqrt_alpha_bar, dtype=torch.float32)
    s1ab = torch.as_tensor(sched.sqrt_one_minus_alpha_bar, dtype=torch.float32)

    def eps_fn(x, t):
        shape = (-1, 1, 1, 1)
        return (x - sab[t].view(shape) * x0_image) / s1ab[t].view(shape) + offset[t].view(shape)

    return eps_fn


@pytest.mark.parametrize("kind", B.T_SAMPLINGS)
def test_monte_carlo_estimator_is_unbiased(kind):
    sched = Schedule(SMALL)
    image = _images(1, size=4)
    offset = torch.linspace(0.05, 0.6, SMALL.T + 1) ** 2
    eps_fn = _oracle(_x0(image)[0], sched, offset)
    exact = B.variational_bound(eps_fn, sched, image, batch_size=64)
    # analytic value of each deterministic term: c0^2 (s1ab / sab * offset)^2 / (2 var_p) + variance part
    tab = B.term_tables(sched)
    ts = np.arange(2, SMALL.T + 1)
    vq, vp, c0 = tab["var_q"][ts], tab["var_p"][ts], tab["c0"][ts]
    err2 = (tab["s1ab"][ts] / tab["sab"][ts] * offset.double().numpy()[ts]) ** 2
    analytic = (0.5 * (np.log(vp / vq) + vq / vp - 1) + c0 ** 2 * err2 / (2 * vp)) / math.log(2)
    np.testing.assert_allclose(exact.per_t["term"][1:], analytic, rtol=2e-4)
    n = 400
    mc = B.variational_bound(eps_fn, sched, np.repeat(image, n, axis=0), t_samples=3, t_sampling=kind, seed=1,
                             batch_size=512)
    s, e = mc.summary(), exact.summary()
    assert abs(s["rate_bpd"] - e["rate_bpd"]) < 4 * s["rate_bpd_stderr"] + 1e-9
    assert s["distortion_bpd"] == pytest.approx(e["distortion_bpd"], rel=1e-3)
    assert s["mc_stderr_bpd"] == pytest.approx(s["rate_bpd_stderr"], rel=0.5)


def test_proposals_and_timestep_sampling():
    sched = Schedule()
    for kind in B.T_SAMPLINGS:
        q = B.proposal(sched, kind)
        assert q.shape == (999,) and q.sum() == pytest.approx(1.0) and (q > 0).all()
        ts = B.sample_timesteps(q, 50, 8, kind, seed=3)
        assert ts.shape == (50, 8) and ts.min() >= 2 and ts.max() <= 1000
    q = B.proposal(sched, "importance")
    assert q[0] > 100 * q[-1]  # mass concentrates at small t
    strat = B.sample_timesteps(B.proposal(sched, "stratified"), 1, 10, "stratified", seed=0)[0]
    assert all(2 + 99.9 * k <= t <= 2 + 99.9 * (k + 1) for k, t in enumerate(strat))
    with pytest.raises(ValueError):
        B.proposal(sched, "nope")


def test_run_bound_outputs(tmp_path, small_model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(2)):
        Image.fromarray(im).save(folder / f"{i}.png")
    model_path = next(tmp_path.glob("tiny-*.safetensors"))
    result, paths = B.run_bound(str(model_path), images=folder, out_dir=tmp_path / "out", batch_size=32)
    js = json.loads(paths[0].read_text())
    assert paths[1].suffix == ".png" and paths[1].stat().st_size > 1000
    assert len(js["terms_bpd"]) == SMALL.T and len(js["mse_x0_per_t"]) == SMALL.T
    assert js["terms_bpd"][0] == pytest.approx(js["distortion_bpd"])
    assert js["paper"]["total_bpd"] == 3.75 and js["model_identity"] == small_model.identity
    assert len(js["cumulative_rate_bpd"]) == SMALL.T
    text = B.format_report(result.summary())
    assert "rate" in text and "1.78" in text and "0.95" in text
    mc, paths = B.run_bound(str(model_path), images=folder, out_dir=tmp_path / "out", t_samples=2)
    js = json.loads(paths[0].read_text())
    assert js["mode"] == "mc" and js["t_samples"] == 2 and sum(js["count_per_t"]) == 2 * 3
    with pytest.raises(InputError):
        B.run_bound(str(tmp_path / "missing.safetensors"), images=folder)


def test_cli_bound(tmp_path, small_model):
    from cli.main import main

    np.savez(tmp_path / "imgs.npz", images=_images(2))
    model_path = next(tmp_path.glob("tiny-*.safetensors"))
    runner = CliRunner()
    res = runner.invoke(main, ["bound", "--model", str(model_path), "--images", str(tmp_path / "imgs.npz"),
                               "--t-samples", "3", "--out", str(tmp_path / "o"), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "distortion" in res.output and list((tmp_path / "o").glob("*.json"))
    bad = runner.invoke(main, ["bound", "--model", str(tmp_path / "nope.safetensors"), "-q"])
    assert bad.exit_code == 1 and "error:" in bad.output


def test_eval_bound_main(tmp_path, small_model):
    from eval.bound import main

    np.savez(tmp_path / "imgs.npz", images=_images(1))
    model_path = next(tmp_path.glob("tiny-*.safetensors"))
    assert main(["--model", str(model_path), "--images", str(tmp_path / "imgs.npz"), "--out", str(tmp_path),
                 "--t-samples", "2", "-q"]) == 0
    assert main(["--model", str(tmp_path / "nope.safetensors"), "-q"]) == 1


def test_bundled_model_decoder_term(shared_dir):
    """The decoder term and t=1 RMSE of the bundled model on 8 dev images sit near the bootstrap's 2.07 / 1.02."""
    from ddpmcodec.data import load_dev_set
    from ddpmcodec.network.model_io import load_model

    try:
        model = load_model("default")
    except InputError:
        pytest.skip("bundled model not present")
    res = B.model_bound(model, load_dev_set(8, shared_dir=shared_dir), t_samples=1, batch_size=16)
    s = res.summary()
    assert 1.8 < s["distortion_bpd"] < 2.4 and 0.9 < s["t1_rmse_0_255"] < 1.2
