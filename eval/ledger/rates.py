"""Per-image columns of the ledger: (a) the model's 1000-step ideal, (b) the schedule's NELBO, (c)-(f) the codec."""
from __future__ import annotations

import time

import numpy as np
import torch

from ddpmcodec.bound import model_eps_fn, pair_noise, pair_terms, prior_term_bits, term_tables
from ddpmcodec.codec.progressive import CodecSettings, encode, learned_layer_for
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.container import header as container
from ddpmcodec.diffusion import LOG2, Schedule, gaussian_kl, predict_x0, q_sample_batched
from ddpmcodec.entropy import pixelmodel
from ddpmcodec.entropy.x0net import coding as learned_x0
from ddpmcodec.errors import InputError
from ddpmcodec.images import from_tiles, to_tiles
from ddpmcodec.schedule.steps import equal_kl_schedule, profile_for


LEDGER_VERSION = 2  # bump when a per-image computation changes meaning (part of the cache key)
NELBO_SLOT = 1 << 24  # noise slots of (b), disjoint from (a)'s slots (1 .. T + 1 + #samples)
PER_IMAGE_ARRAYS_MAX = 100  # larger runs keep only per-image scalars in the JSON (the cache has everything)
COLUMNS = (("model", "(a) model, 1000-step ideal"), ("schedule", "(b) schedule NELBO (unbiased)"),
           ("chain", "(c) ideal along the encoder's chain"), ("stream", "(d) stream"), ("file", "(e) whole file"))



# ---- (a) the model's single-step ideal rate, cumulative, importance-sampled per interval ------------------------
def interval_samples(profile, steps: list[int], k: int, rng: np.random.Generator, mix: float = 0.1
                     ) -> list[tuple[int, float, int, bool]]:
    """(s, weight, interval, enumerated) tuples whose weighted sum of single-step terms estimates, without bias, the sum over
    every s in each interval (lo, hi] of the codec's steps [T, ..., t_end] followed by (1, t_end].

    Intervals of <= k steps are enumerated (weight 1); longer ones get k timesteps stratified in the CDF of
    q(s) proportional to profile.rate_bpd[s] (mixed with ``mix`` uniform), weight 1 / (k q(s)).
    """
    bounds = list(steps) + ([1] if steps[-1] > 1 else [])
    out = []
    for j in range(len(bounds) - 1):
        hi, lo = bounds[j], bounds[j + 1]
        s = np.arange(lo + 1, hi + 1)
        if len(s) <= k:
            out += [(int(v), 1.0, j, True) for v in s]
            continue
        r = np.maximum(np.asarray(profile.rate_bpd, dtype=np.float64)[s], 0.0)
        q = (1 - mix) * (r / r.sum() if r.sum() > 0 else np.full(len(s), 1.0 / len(s))) + mix / len(s)
        q = q / q.sum()
        cdf = np.cumsum(q)
        u = (np.arange(k) + rng.random(k)) / k
        idx = np.minimum(np.searchsorted(cdf, u, side="right"), len(s) - 1)
        out += [(int(s[i]), float(1.0 / (k * q[i])), j, False) for i in idx]
    return out


def _eval_terms(model, sched, tab, x0: torch.Tensor, ts: list[int], slots: list[int], seed: int, image: int,
                batch: int) -> np.ndarray:
    """Bits (summed over the image's dimensions) of pair_terms' clipped-mean term for each (t, slot)."""
    eps_fn = model_eps_fn(model)
    n_tiles = len(x0)
    dims_tile = x0[0].numel()
    t_all = torch.tensor(ts, dtype=torch.long).repeat_interleave(n_tiles)
    noise = torch.cat([pair_noise(seed, image, s, tuple(x0.shape)) for s in slots])
    x0_all = x0.repeat(len(ts), 1, 1, 1)
    xt = q_sample_batched(sched, x0_all, t_all, noise)
    out = []
    for a in range(0, len(xt), batch):
        sl = slice(a, a + batch)
        with torch.no_grad():
            eps = eps_fn(xt[sl].to(model.device), t_all[sl]).float().cpu()
        out.append(pair_terms(tab, x0_all[sl], xt[sl], eps, noise[sl], t_all[sl])["term_clip"])
    per = torch.cat(out).view(len(ts), n_tiles).sum(1) * dims_tile
    return per.numpy()


def model_ideal(model, pixels: np.ndarray, steps: list[int], prior: str, *, k: int, seed: int, image: int,
                batch: int = 64) -> dict:
    """(a) for one image: cumulative bits at each coded t (aligned with ``steps``) and the NELBO (lossless)."""
    sched, profile = Schedule(model.diffusion), profile_for(model)
    x0, mask = to_tiles(pixels, model.unet_config.resolution)
    if not bool(mask.all()):
        raise InputError("the ledger needs image sides that are multiples of the model's tile size")
    tab = term_tables(sched)
    for s in range(2, sched.T + 1):
        tab["var_p"][s] = sched.prior_variance(s, s - 1, prior, mse_x0=float(profile.mse_x0[s]))
    tab = {key: torch.as_tensor(v, dtype=torch.float64) for key, v in tab.items()}
    rng = np.random.default_rng([seed & 0xFFFFFFFF, image, 7])
    triples = interval_samples(profile, steps, k, rng)
    ts = [s for s, *_ in triples] + [1]
    # noise slots as ddpmcodec.bound's exact mode (slot = t) where t is enumerated, so that with every step
    # enumerated the draws are the bound's own; sampled t (possibly repeated) get slots above T
    slots = [s if exact else sched.T + 1 + i for i, (s, _, _, exact) in enumerate(triples)] + [1]
    bits = _eval_terms(model, sched, tab, x0, ts, slots, seed, image, batch)
    n_int = max(j for _, _, j, _ in triples) + 1 if triples else 0
    interval = np.zeros(n_int)
    for (_, w, j, _), b in zip(triples, bits[:-1]):
        interval[j] += w * b
    prior_bits = float(prior_term_bits(sched, x0).sum()) * x0[0].numel()
    cum = prior_bits + np.concatenate([[0.0], np.cumsum(interval)])  # cum[j]: to hold x_{bounds[j]}
    return {"cum_bits": cum[: len(steps)].tolist(), "nelbo_bits": float(cum[-1] + bits[-1]),
            "decoder_bits": float(bits[-1]), "prior_bits": prior_bits, "n_evals": len(ts)}


# ---- (b) the schedule's own NELBO on independent draws -----------------------------------------------------------
def schedule_nelbo(model, pixels: np.ndarray, steps: list[int], prior: str, *, seed: int, image: int,
                   batch: int = 64) -> dict:
    """(b) for one image: KL bits of every coded skip (fresh x_{t_j} per level, the codec's prior) and the x_0
    layer's code length from a fresh x_{t_end} (eval.bitsback_bench.schedule_nelbo's pattern, progressive schedule)."""
    sched, profile = Schedule(model.diffusion), profile_for(model)
    x0, mask = to_tiles(pixels, model.unet_config.resolution)
    x0 = x0.double()
    n_tiles = len(x0)
    real = mask.flatten()
    t_all = torch.tensor(steps, dtype=torch.long).repeat_interleave(n_tiles)
    noise = torch.cat([pair_noise(seed, image, NELBO_SLOT + j, tuple(x0.shape)) for j in range(len(steps))])
    xt = q_sample_batched(sched, x0.repeat(len(steps), 1, 1, 1), t_all, noise.double())
    eps_fn = model_eps_fn(model)
    with torch.no_grad():
        eps = torch.cat([eps_fn(xt[a:a + batch].float().to(model.device), t_all[a:a + batch]).float().cpu()
                         for a in range(0, len(xt), batch)]).double()
    x0_hat = torch.cat([predict_x0(sched, xt[j * n_tiles:(j + 1) * n_tiles], eps[j * n_tiles:(j + 1) * n_tiles],
                                   t).clamp(-1.0, 1.0) for j, t in enumerate(steps)])
    kls = []
    for j in range(len(steps) - 1):
        t, s = steps[j], steps[j + 1]
        sl = slice(j * n_tiles, (j + 1) * n_tiles)
        c0, ct, var_q = sched.skip_posterior_coefs(t, s)
        var_p = sched.prior_variance(t, s, prior, mse_x0=float(profile.mse_x0[t]))
        mu_q = c0 * x0 + ct * xt[sl]
        mu_p = c0 * x0_hat[sl] + ct * xt[sl]
        kls.append(float(gaussian_kl(mu_q.flatten()[real], var_q, mu_p.flatten()[real], var_p).sum()) / LOG2)
    h, w, _ = pixels.shape
    last = slice((len(steps) - 1) * n_tiles, None)
    rows = pixelmodel.mean_rows(x0_hat[last].float(), h, w)
    x0_layer = float(pixelmodel.code_length_bits(pixels, rows, pixelmodel.fit(pixels, rows)))
    layer = learned_layer_for(model, steps[-1])
    if layer is not None:  # the encoder's auto choice: the shorter of the two layers
        x_t_image = from_tiles(xt[last].float(), h, w)
        x0_layer = min(x0_layer, learned_x0.code_length_bits(layer.net, pixels, rows, x_t_image))
    mean_T = sched.sqrt_alpha_bar[sched.T] * x0.flatten()[real]
    prior_bits = float(gaussian_kl(mean_T, 1.0 - sched.alpha_bar[sched.T], torch.zeros_like(mean_T), 1.0).sum()) / LOG2
    cum = prior_bits + np.concatenate([[0.0], np.cumsum(kls)])
    return {"cum_bits": cum.tolist(), "x0_layer_bits": x0_layer, "prior_bits": prior_bits,
            "n_evals": len(steps)}


# ---- (c)-(f) and the lossless split from the encoder ---------------------------------------------------------------
def codec_columns(model, pixels: np.ndarray, settings: CodecSettings, verify: bool = False) -> dict:
    res = encode(pixels, model, settings)
    lossy = [s for s in res.steps if s.t > 0]
    last = res.steps[-1]
    if last.t != 0:
        raise RuntimeError("encoder did not produce a lossless file")
    header_bytes = container.unpack(res.data).header_bytes
    steps_stream = lossy[-1].stream_bits
    out = {"t": [s.t for s in lossy], "chain_cum_bits": np.cumsum([s.ideal_bits for s in lossy]).tolist(),
           "stream_bits": [int(s.stream_bits) for s in lossy],
           "file_bits": [8 * int(s.bytes_if_stopped) for s in lossy], "psnr_db": [float(s.psnr) for s in lossy],
           "lossless": {"file_bits": 8 * len(res.data), "header_bits": 8 * header_bytes,
                        "steps_stream_bits": int(steps_stream), "x0_stream_bits": int(last.stream_bits - steps_stream),
                        "termination_bits": 8 * len(res.data) - 8 * header_bytes - int(last.stream_bits),
                        "chain_steps_bits": float(sum(s.ideal_bits for s in lossy)),
                        "x0_layer_bits": float(last.ideal_bits)},
           "encode_s": res.seconds}
    if verify:
        start = time.perf_counter()
        final = list(decode_progressive(res.data, model, every_step=False))[-1]
        if final.t != 0 or not np.array_equal(final.pixels, pixels):
            raise RuntimeError("lossless round trip failed")
        out["decode_s"] = time.perf_counter() - start
    return out


def ledger_image(model, pixels: np.ndarray, settings: CodecSettings, *, index: int, t_samples: int, seed: int,
                 verify: bool = False, batch: int = 64) -> dict:
    """Every column for one image (bits, not yet per dim)."""
    steps = equal_kl_schedule(profile_for(model), settings.n_steps, settings.t_end, settings.prior, model.diffusion)
    start = time.perf_counter()
    c = codec_columns(model, pixels, settings, verify)
    if c["t"] != steps:
        raise RuntimeError(f"encoder steps {c['t'][:4]}... differ from equal_kl_schedule {steps[:4]}...")
    t1 = time.perf_counter()
    a = model_ideal(model, pixels, steps, settings.prior, k=t_samples, seed=seed, image=index, batch=batch)
    t2 = time.perf_counter()
    b = schedule_nelbo(model, pixels, steps, settings.prior, seed=seed, image=index, batch=batch)
    t3 = time.perf_counter()
    return {"index": index, **c, "model_cum_bits": a["cum_bits"], "model_nelbo_bits": a["nelbo_bits"],
            "model_decoder_bits": a["decoder_bits"], "model_evals": a["n_evals"],
            "schedule_cum_bits": b["cum_bits"], "schedule_x0_layer_bits": b["x0_layer_bits"],
            "seconds": {"codec": t1 - start, "model_ideal": t2 - t1, "schedule_nelbo": t3 - t2}}


