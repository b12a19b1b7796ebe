"""The DDPM variational bound in bits/dim, as the official ``calc_bpd_loop`` (Ho et al. 2020; notes §2).

For each image and each 1-based t a *fresh* x_t ~ q(x_t|x_0) is drawn (no chain). Terms, per dimension, in bits:

* t >= 2: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), p mean from eps by eq. 11 (unclipped; the ``*_clip`` variant uses
  the official clip_denoised=True mean with x^_0 clipped to [-1, 1]), p variance 'fixedlarge' (t=1 quirk included).
* t = 1: the discretized decoder NLL -log2 p(x_0|x_1), mean = x^_0 clipped, std = sqrt(fixedlarge_variance(1)).
* prior: KL(q(x_T|x_0) || N(0, I)).

rate = prior + sum_{t>=2} terms (the paper's 1.78), distortion = decoder term (1.97), total = rate + distortion.

Exact mode evaluates every t. Monte-Carlo mode (``t_samples=K``) evaluates the decoder term exactly and K timesteps
t in 2..T per image, drawn from a proposal q(t) ('uniform' iid, 'stratified' uniform, or 'importance': a schedule-based
proxy of the term curve, stratified in its CDF), and estimates sum_{t>=2} term(t) by mean_k term(t_k) / q(t_k); with
uniform q this is (T-1) * mean_k term(t_k). Every estimate is unbiased for rate, distortion and total.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ddpmcodec.diffusion import LOG2, Schedule, discretized_gaussian_nll_bits, gaussian_kl, q_sample_batched

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,C,H,W) float32, t (B,) 1-based) -> eps
T_SAMPLINGS = ("importance", "stratified", "uniform")
PAPER = {"rate_bpd": 1.78, "distortion_bpd": 1.97, "total_bpd": 3.75, "rmse_0_255": 0.95}
TERM_KEYS = ("term", "term_clip", "mse_x0", "mse_x0_clip", "eps_mse")
RAY_PARTS_FOLDER = "ray-parts"  # under a --ray run's --out: finished tasks, kept until the JSON is written


# ---- per-t coefficient tables -------------------------------------------------------------------------------
def term_tables(sched: Schedule) -> dict[str, np.ndarray]:
    """float64 arrays indexed by 1-based t (length T+1; index 0 unused) from the Schedule's own formulas.

    c0, ct, var_q: q(x_{t-1}|x_t,x_0) = N(c0 x_0 + ct x_t, var_q); var_p: 'fixedlarge' p variance;
    sab, s1ab: sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t).
    """
    T = sched.T
    tab = {k: np.zeros(T + 1) for k in ("c0", "ct", "var_q", "var_p")}
    for t in range(1, T + 1):
        tab["c0"][t], tab["ct"][t], tab["var_q"][t] = sched.skip_posterior_coefs(t, t - 1)
        tab["var_p"][t] = sched.prior_variance(t, t - 1, "fixedlarge")
    tab["var_q"][1] = 1.0  # unused: t = 1 is the decoder term (the true posterior is a point mass)
    tab["sab"], tab["s1ab"] = sched.sqrt_alpha_bar.copy(), sched.sqrt_one_minus_alpha_bar.copy()
    return tab


def prior_term_bits(sched: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T|x_0) || N(0, I)) in bits/dim per image; x0 (N, C, H, W) in [-1, 1] -> (N,) float64."""
    x0 = x0.double()
    mean = sched.sqrt_alpha_bar[sched.T] * x0
    kl = gaussian_kl(mean, 1.0 - sched.alpha_bar[sched.T], torch.zeros_like(mean), 1.0)
    return kl.flatten(1).mean(1) / LOG2


def pair_terms(tab: dict[str, torch.Tensor], x0: torch.Tensor, xt: torch.Tensor, eps: torch.Tensor,
               noise: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-(image, t) quantities in float64, each (P,): bits/dim terms and mean squared errors.

    x0, xt, eps, noise: (P, C, H, W); t: (P,) 1-based int64; tab: :func:`term_tables` as float64 tensors.
    term / term_clip: KL bits/dim with the unclipped (eq. 11) / clipped p mean for t >= 2, decoder NLL for t = 1.
    mse_x0 / mse_x0_clip: mean (x^_0 - x_0)^2 in [-1, 1] units; eps_mse: mean (eps_theta - eps)^2 (L_simple).
    """
    x0, xt, eps = x0.double(), xt.double(), eps.double()
    col = lambda name: tab[name][t].view(-1, 1, 1, 1)  # noqa: E731
    x0_hat = (xt - col("s1ab") * eps) / col("sab")
    x0_clip = x0_hat.clamp(-1.0, 1.0)
    mu_q = col("c0") * x0 + col("ct") * xt
    mu_p = col("c0") * x0_hat + col("ct") * xt  # == eq. 11: (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)
    mu_p_clip = col("c0") * x0_clip + col("ct") * xt
    var_q, var_p = col("var_q"), col("var_p")
    kl = gaussian_kl(mu_q, var_q, mu_p, var_p).flatten(1).mean(1) / LOG2
    kl_clip = gaussian_kl(mu_q, var_q, mu_p_clip, var_p).flatten(1).mean(1) / LOG2
    dec = t == 1
    if bool(dec.any()):
        nll = discretized_gaussian_nll_bits(x0[dec], x0_clip[dec], tab["var_p"][1].sqrt()).flatten(1).mean(1)
        kl = kl.masked_scatter(dec, nll)
        kl_clip = kl_clip.masked_scatter(dec, nll)
    return {"term": kl, "term_clip": kl_clip,
            "mse_x0": (x0_hat - x0).pow(2).flatten(1).mean(1), "mse_x0_clip": (x0_clip - x0).pow(2).flatten(1).mean(1),
            "eps_mse": (eps - noise.double()).pow(2).flatten(1).mean(1)}


def pair_noise(seed: int, image: int, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Deterministic N(0, I) noise for one (image, slot) pair, independent of batching (CPU float32)."""
    key = np.random.SeedSequence([seed & 0xFFFFFFFF, image, slot]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(key) & 0x7FFFFFFFFFFFFFFF)
    return torch.randn(shape, generator=gen)


def evaluate_pairs(eps_fn: EpsFn, sched: Schedule, x0_all: torch.Tensor, image: np.ndarray, t: np.ndarray,
                   slot: np.ndarray, *, seed: int = 0, batch_size: int = 64, device: str | torch.device = "cpu",
                   progress: bool = False, first_image: int = 0) -> dict[str, np.ndarray]:
    """Evaluate :func:`pair_terms` for P (image, t) pairs, batching several images and timesteps per network call.

    x0_all: (N, C, H, W) float32 in [-1, 1] (exact pixel levels), the images first_image.. of the run; image, t,
    slot: (P,) int arrays, image the run's image index (it and slot key the noise, so duplicates of t stay
    independent). Pairs are evaluated in network batches of batch_size, pairs 0.., batch_size.., ... Returns
    float64 numpy arrays (P,) keyed by :data:`TERM_KEYS`.
    """
    device = torch.device(device)
    tab = {k: torch.as_tensor(v, dtype=torch.float64, device=device) for k, v in term_tables(sched).items()}
    x0_all = x0_all.to(device)
    shape = tuple(x0_all.shape[1:])
    out = {k: np.zeros(len(t)) for k in TERM_KEYS}
    with tqdm(total=len(t), disable=not progress, unit="eval", desc="bound", dynamic_ncols=True) as bar:
        for start in range(0, len(t), batch_size):
            sl = slice(start, start + batch_size)
            idx = torch.as_tensor(image[sl] - first_image, dtype=torch.long, device=device)
            tt = torch.as_tensor(t[sl], dtype=torch.long, device=device)
            noise = torch.stack([pair_noise(seed, int(i), int(s), shape) for i, s in zip(image[sl], slot[sl])])
            noise = noise.to(device)
            x0 = x0_all[idx]
            xt = q_sample_batched(sched, x0, tt, noise)
            with torch.no_grad():
                eps = eps_fn(xt, tt).float()
            for k, v in pair_terms(tab, x0, xt, eps, noise, tt).items():
                out[k][sl] = v.cpu().numpy()
            bar.update(len(tt))
    return out


# ---- timestep proposals for the Monte-Carlo estimator -------------------------------------------------------
def proposal(sched: Schedule, kind: str = "importance", mix: float = 0.02) -> np.ndarray:
    """Probabilities q(t) over t = 2..T, shape (T-1,), float64, summing to 1.

    'uniform'/'stratified': 1/(T-1). 'importance': proportional to a model-free proxy of the term curve,
    KL(N(mu, var_q) || N(mu + c0 e, var_p)) with E e^2 = m(t), m = 0.044 (1/SNR)^0.7 saturating at 0.14 (fitted to
    CIFAR-10 models), mixed with ``mix`` of uniform so no weight 1/q is large. Any q > 0 keeps the estimate unbiased.
    """
    if kind not in T_SAMPLINGS:
        raise ValueError(f"unknown t sampling {kind!r}; choose from {T_SAMPLINGS}")
    T = sched.T
    uniform = np.full(T - 1, 1.0 / (T - 1))
    if kind != "importance":
        return uniform
    tab = term_tables(sched)
    ts = np.arange(2, T + 1)
    ab = sched.alpha_bar[ts]
    m = 0.044 * ((1.0 - ab) / ab) ** 0.7
    m = m * 0.14 / (m + 0.14)
    vq, vp, c0 = tab["var_q"][ts], tab["var_p"][ts], tab["c0"][ts]
    proxy = 0.5 * (np.log(vp / vq) + vq / vp - 1.0) + c0 ** 2 * m / (2.0 * vp)
    return (1.0 - mix) * proxy / proxy.sum() + mix * uniform


def sample_timesteps(q: np.ndarray, n_images: int, k: int, kind: str, seed: int) -> np.ndarray:
    """(n_images, k) 1-based timesteps in 2..T drawn from q: iid for 'uniform', else one per CDF stratum."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x7A3])
    if kind == "uniform":
        u = rng.random((n_images, k))
    else:
        u = (np.arange(k)[None, :] + rng.random((n_images, k))) / k
    cdf = np.cumsum(q)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, u, side="right").clip(0, len(q) - 1) + 2


# ---- the bound ----------------------------------------------------------------------------------------------
@dataclass
class BoundResult:
    """Bound estimate; per-image arrays (N,) and per-t means (T,) with index i <-> 1-based t = i + 1."""

    T: int
    mode: str  # "exact" or "mc"
    t_samples: int | None
    t_sampling: str | None
    seed: int
    prior: np.ndarray
    rate: np.ndarray
    rate_clip: np.ndarray
    distortion: np.ndarray
    mse_t1_clip: np.ndarray
    per_t: dict[str, np.ndarray]  # TERM_KEYS -> (T,) means over the pairs evaluated at t (NaN where none)
    per_t_count: np.ndarray  # (T,) number of pairs evaluated at each t
    mc_var: np.ndarray | None = None  # (N,) Monte-Carlo variance of each image's rate estimate
    extra: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.rate)

    def summary(self) -> dict:
        """Scalar results: bits/dim means, standard errors over images, RMSE of x^_0 at t=1 on 0..255."""
        n = self.n_images
        se = lambda a: float(np.std(a, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
        total = self.rate + self.distortion
        rmse = float(math.sqrt(np.mean(self.mse_t1_clip)) * 127.5)
        out = {"n_images": n, "mode": self.mode, "rate_bpd": float(self.rate.mean()),
               "distortion_bpd": float(self.distortion.mean()), "total_bpd": float(total.mean()),
               "total_bpd_stderr": se(total), "rate_bpd_stderr": se(self.rate),
               "distortion_bpd_stderr": se(self.distortion), "prior_bpd": float(self.prior.mean()),
               "rate_bpd_official_clip": float(self.rate_clip.mean()),
               "total_bpd_official_clip": float((self.rate_clip + self.distortion).mean()),
               "t1_rmse_0_255": rmse, "t1_psnr_db": 20 * math.log10(255.0 / rmse) if rmse > 0 else None}
        if self.mc_var is not None:
            out["mc_stderr_bpd"] = float(math.sqrt(self.mc_var.sum()) / n)
            out["t_samples"], out["t_sampling"] = self.t_samples, self.t_sampling
        return out

    def cumulative_rate(self) -> np.ndarray:
        """(T,) bits/dim to hold x_t: prior + sum_{s=t+1..T} term(s); index i <-> t = i + 1 (exact mode)."""
        terms = np.nan_to_num(self.per_t["term"])
        cum = np.concatenate([np.cumsum(terms[::-1])[::-1][1:], [0.0]])
        return cum + self.prior.mean()

    def table4(self, steps=(100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)) -> list[dict]:
        """Paper Table 4 rows: after k reverse steps the receiver holds x_t, t = T + 1 - k (rate, RMSE of x^_0)."""
        cum, rows = self.cumulative_rate(), []
        for k in steps:
            if 1 <= k <= self.T:
                t = self.T + 1 - k
                mse = self.per_t["mse_x0_clip"][t - 1]
                rows.append({"steps": k, "t": t, "rate_bpd": float(cum[t - 1]),
                             "rmse_0_255": float(math.sqrt(mse) * 127.5) if np.isfinite(mse) else None})
        return rows

    def to_json(self) -> dict:
        """Everything, JSON-ready (NaN -> None). Per-t lists have T entries, entry i is 1-based t = i + 1."""
        clean = lambda a: [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]  # noqa
        out = {"description": __doc__.split("\n\n")[0] + " Per-t lists: entry i is 1-based t = i + 1 (i=0: decoder).",
               **self.summary(), "paper": PAPER, "T": self.T, "seed": self.seed, **self.extra,
               "terms_bpd": clean(self.per_t["term"]), "terms_bpd_official_clip": clean(self.per_t["term_clip"]),
               "mse_x0_per_t": clean(self.per_t["mse_x0"]), "mse_x0_clip_per_t": clean(self.per_t["mse_x0_clip"]),
               "eps_mse_per_t": clean(self.per_t["eps_mse"]), "count_per_t": self.per_t_count.astype(int).tolist(),
               "total_bpd_per_image": clean(self.rate + self.distortion)}
        if self.mode == "exact":
            out["cumulative_rate_bpd"] = clean(self.cumulative_rate())
            out["table4"] = self.table4()
        return out


def variational_bound(eps_fn: EpsFn, sched: Schedule, images: np.ndarray, *, t_samples: int | None = None,
                      t_sampling: str = "importance", seed: int = 0, batch_size: int = 64,
                      device: str | torch.device = "cpu", progress: bool = False,
                      pair_runner: Callable | None = None) -> BoundResult:
    """The bound of uint8 images (N, H, W, C) under ``eps_fn``; exact over all t, or Monte-Carlo with K = t_samples.

    pair_runner: what evaluates the pair list, called as :func:`evaluate_pairs` (the default, in this process);
    ddpmcodec.batch.ray_bound.ray_pair_runner runs it as Ray tasks."""
    images = np.asarray(images)
    n, T = len(images), sched.T
    if n == 0:
        raise ValueError("no images")
    x0_all = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    prior = prior_term_bits(sched, x0_all).numpy()
    if t_samples is None:
        img = np.repeat(np.arange(n), T)
        ts = np.tile(np.arange(T, 0, -1), n)
        slot = ts
    else:
        if t_samples < 1:
            raise ValueError("t_samples must be >= 1")
        q = proposal(sched, t_sampling)
        drawn = sample_timesteps(q, n, t_samples, t_sampling, seed)  # (n, K)
        img = np.repeat(np.arange(n), t_samples + 1)
        ts = np.concatenate([np.ones((n, 1), dtype=np.int64), drawn], axis=1).reshape(-1)
        slot = np.tile(np.arange(t_samples + 1), n) + T + 1  # distinct from the exact mode's slots
    res = (pair_runner or evaluate_pairs)(eps_fn, sched, x0_all, img, ts, slot, seed=seed, batch_size=batch_size,
                                          device=device, progress=progress)
    per_t, count = {}, np.bincount(ts - 1, minlength=T).astype(float)
    for k, v in res.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            per_t[k] = np.bincount(ts - 1, weights=v, minlength=T) / count
    dec = ts == 1
    distortion, mse_t1 = res["term"][dec], res["mse_x0_clip"][dec]
    mc_var = None
    if t_samples is None:
        later = ~dec
        rate = prior + res["term"][later].reshape(n, T - 1).sum(1)
        rate_clip = prior + res["term_clip"][later].reshape(n, T - 1).sum(1)
    else:
        w = 1.0 / q[drawn - 2]  # (n, K) importance weights 1 / q(t)
        est = res["term"].reshape(n, t_samples + 1)[:, 1:] * w
        est_clip = res["term_clip"].reshape(n, t_samples + 1)[:, 1:] * w
        rate, rate_clip = prior + est.mean(1), prior + est_clip.mean(1)
        mc_var = _mc_variance(est, t_sampling)
    return BoundResult(T=T, mode="exact" if t_samples is None else "mc", t_samples=t_samples,
                       t_sampling=None if t_samples is None else t_sampling, seed=seed, prior=prior, rate=rate,
                       rate_clip=rate_clip, distortion=distortion, mse_t1_clip=mse_t1, per_t=per_t,
                       per_t_count=count, mc_var=mc_var)


def _mc_variance(est: np.ndarray, kind: str) -> np.ndarray:
    """Per-image variance of mean_k est[:, k]: sample variance / K (iid), successive differences (stratified)."""
    n, k = est.shape
    if k < 2:
        return np.full(n, np.nan)
    if kind == "uniform":
        return est.var(1, ddof=1) / k
    # successive differences of neighbouring strata: unbiased when the strata means vary smoothly
    return (np.diff(est, axis=1) ** 2).sum(1) / (2.0 * (k - 1) * k)


# ---- running on a model: precision, report, outputs ---------------------------------------------------------
def model_eps_fn(model, precision: str = "fp32") -> EpsFn:
    """``model.eps`` as an EpsFn; precision 'fp32' (TF32 off) or 'bf16' (autocast, CUDA only)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    cuda = model.device.type == "cuda"

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if cuda:
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    return model.eps(x, t).float()
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        return model.eps(x, t)

    return eps_fn


def model_bound(model, images: np.ndarray, *, precision: str = "fp32", **kwargs) -> BoundResult:
    """:func:`variational_bound` of ``images`` (N, H, W, 3) uint8 under a loaded :class:`DiffusionModel`."""
    f, c = model.unet_config.downsample_factor, model.unet_config.in_channels
    if images.ndim != 4 or images.shape[1] % f or images.shape[2] % f or images.shape[3] != c:
        raise ValueError(f"images {images.shape} need H, W divisible by {f} and {c} channels")
    result = variational_bound(model_eps_fn(model, precision), Schedule(model.diffusion), images,
                               device=model.device, **kwargs)
    result.extra.update({"model": model.name, "model_identity": model.identity, "precision": precision,
                         "model_steps_trained": (model.metadata.get("training") or {}).get("steps")})
    return result


def format_report(summary: dict) -> str:
    """Human-readable lines: rate / distortion / total / RMSE next to the paper's numbers."""
    s = summary
    how = "exact, all t" if s["mode"] == "exact" else f"Monte-Carlo, {s['t_samples']} t/image ({s['t_sampling']})"
    lines = [f"variational bound on {s['n_images']} images ({how}), bits/dim:",
             f"  {'':24s}{'ours':>10s}{'stderr':>10s}{'paper':>8s}"]
    for label, key, paper in (("rate (prior + t>=2)", "rate_bpd", "rate_bpd"),
                              ("distortion (t=1 decoder)", "distortion_bpd", "distortion_bpd"),
                              ("total (NLL bound)", "total_bpd", "total_bpd")):
        lines.append(f"  {label:24s}{s[key]:10.4f}{s[key + '_stderr']:10.4f}{PAPER[paper]:8.2f}")
    lines.append(f"  {'RMSE x^_0 at t=1 (0..255)':24s}{s['t1_rmse_0_255']:10.3f}{'':10s}{PAPER['rmse_0_255']:8.2f}")
    lines.append(f"  official clip_denoised=True: rate {s['rate_bpd_official_clip']:.4f}, "
                 f"total {s['total_bpd_official_clip']:.4f}; prior {s['prior_bpd']:.2e}")
    if "mc_stderr_bpd" in s:
        lines.append(f"  Monte-Carlo part of the stderr (these images fixed): {s['mc_stderr_bpd']:.4f}")
    return "\n".join(lines)


def plot_bound(result: BoundResult, path: str | Path) -> Path:
    """PNG: per-t terms (log y) and the cumulative rate from T down to t (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(1, result.T + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ok = np.isfinite(result.per_t["term"]) & (t >= 2)
    style = "-" if result.mode == "exact" else "."
    ax.plot(t[ok], result.per_t["term"][ok], style, ms=3, label="KL term at t (bits/dim)")
    ax.plot([1], [result.distortion.mean()], "o", label="decoder term t=1")
    if result.mode == "exact":
        ax.plot(t, result.cumulative_rate(), "-", label="cumulative rate to reach x_t")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t (1-based)")
    ax.set_ylabel("bits/dim")
    s = result.summary()
    ax.set_title(f"rate {s['rate_bpd']:.3f} + distortion {s['distortion_bpd']:.3f} = {s['total_bpd']:.3f} bits/dim "
                 f"({s['n_images']} images)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def run_bound(model_spec: str = "default", *, images: str | Path | None = None, limit: int | None = None,
              out_dir: str | Path | None = None, device: str = "cpu", allow_pickle: bool = False,
              ray: str | None = None, ray_batches: int = 16, **kwargs) -> tuple[BoundResult, list[Path]]:
    """Load a model and images (default: the dev set), compute the bound, write JSON + PNG into ``out_dir``.

    kwargs go to :func:`variational_bound` (t_samples, t_sampling, seed, batch_size, progress) and ``precision``.
    ray: None (this process) or a Ray address ('auto', 'local', host:port): tasks of ray_batches network batches
    each, the same numbers as a local run with one torch thread (ddpmcodec.batch.ray_bound). With out_dir, finished
    tasks are kept in out_dir/RAY_PARTS_FOLDER until the JSON is written, so a rerun after a failure resumes.
    Returns the result and the written paths; print :func:`format_report` of ``result.summary()`` to show it.
    """
    import json

    from ddpmcodec.data import load_dev_set, load_images
    from ddpmcodec.errors import InputError
    from ddpmcodec.network.model_io import load_model

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    model = load_model(model_spec, device=device, allow_pickle=allow_pickle)
    if ray is not None:
        from ddpmcodec.batch.ray_bound import ray_pair_runner
        from ddpmcodec.batch.ray_map import ModelRef

        parts_dir = None if out_dir is None else Path(out_dir) / RAY_PARTS_FOLDER
        kwargs["pair_runner"] = ray_pair_runner(ModelRef.of(model_spec, device, allow_pickle), ray,
                                                precision=kwargs.get("precision", "fp32"), batches_per_task=ray_batches,
                                                parts_dir=parts_dir, model_identity=model.identity)
    data = load_dev_set(limit) if images is None else load_images(images, limit=limit)
    start = time.perf_counter()
    try:
        result = model_bound(model, data, **kwargs)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    result.extra["images"] = "cifar10-test-dev.npz" if images is None else str(images)
    result.extra["seconds"] = time.perf_counter() - start
    paths = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"bound-{model.name}-n{result.n_images}"
        stem += "" if result.mode == "exact" else f"-k{result.t_samples}-{result.t_sampling}"
        paths.append(out / f"{stem}.json")
        paths[0].write_text(json.dumps(result.to_json(), indent=1))
        paths.append(plot_bound(result, out / f"{stem}.png"))
        if ray is not None:  # the finished run's JSON holds everything the kept task parts did
            shutil.rmtree(out / RAY_PARTS_FOLDER, ignore_errors=True)
    return result, paths
