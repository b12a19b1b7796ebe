"""Where the bits go, per stop point of the progressive codec: six rates side by side on the same images.

    python -m eval.ledger --limit 16                  # docs/results/ledger_dev16.{md,json}; 6 min here
    python -m eval.ledger --limit 2 --out /tmp/l      # timing check
    python -m eval.ledger --limit 500                 # the overnight run: 2-3 h on one CPU thread (13.5 s/image
                                                      # on an idle core, 18-50 s while the 2-core machine is
                                                      # shared); resumable: finished images are cached under
                                                      # --cache and reused, so an interrupted run continues

Per coded stop point t of the codec's schedule (T .. t_end, then 0 = lossless), in bits/dim (means over images,
± standard error over images):

(a) model: the model's own 1000-step ideal rate to hold x_t (Table 4 style): prior KL + sum over every single step
    s -> s-1 for s = T .. t+1 of KL(q(x_{s-1}|x_s,x_0) || p(x_{s-1}|x_s)), a fresh x_s ~ q(x_s|x_0) per term, p with
    the clipped x^_0 mean and the codec's prior variance (calibrated: Schedule.prior_variance(s, s-1, 'calibrated',
    mse_x0=profile.mse_x0[s])). Estimated without bias per image: the single steps are split into the intervals
    between coded steps; an interval of <= --t-samples steps is evaluated exactly, a longer one by --t-samples
    timesteps stratified in the CDF of a proposal proportional to the profile's per-step rate (importance weights
    1/q). Lossless row: the model's NELBO (all steps down to s = 2, plus the discretized decoder term at t = 1).
(b) schedule: the codec's schedule's own unbiased NELBO (eval.bitsback_bench.schedule_nelbo, for the *progressive*
    codec's equal_kl_schedule): per coded skip t_j -> t_{j+1} a fresh x_{t_j} ~ q(x_{t_j}|x_0) and the KL under the
    codec's prior; prior KL at T included. Lossless row: + the x_0 layer's code length from a fresh x_{t_end}.
(c) chain ideal: the exact KL of every coded step along the chain the encoder actually sampled (cumsum of
    StepStat.ideal_bits; lossless row: + the x_0 layer's code length).
(d) stream: bits the coded steps occupy on the rANS stack (StepStat.stream_bits), no header, no coder termination.
(e) file: the whole valid file that stops there, 8 * bytes_if_stopped (header, payload and termination).
(f) PSNR of x^_0 at t (dB, mean of per-image PSNR).

The lossless file is split into rate (the steps' stream bits), x_0 layer (its stream bits), header
(container.header.unpack(file).header_bytes) and coder termination (file - header - stream).
Skips cleanly (exit 0, one line) when the dev images (../shared) are absent and --images is not given.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.bound import model_eps_fn, pair_noise, pair_terms, prior_term_bits, term_tables
from ddpmcodec.codec.progressive import CodecSettings, decode_progressive, encode
from ddpmcodec.container import header as container
from ddpmcodec.diffusion import LOG2, Schedule, gaussian_kl, predict_x0, q_sample_batched
from ddpmcodec.entropy import pixelmodel
from ddpmcodec.errors import CodecError, InputError
from ddpmcodec.images import to_tiles
from ddpmcodec.schedule.steps import equal_kl_schedule, profile_for
from eval.report.cache import Cache, image_digest

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
    rows = pixelmodel.mean_rows(x0_hat[(len(steps) - 1) * n_tiles:].float(), h, w)
    x0_layer = float(pixelmodel.code_length_bits(pixels, rows, pixelmodel.fit(pixels, rows)))
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


# ---- aggregation and outputs ---------------------------------------------------------------------------------------
def _ms(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    se = a.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(a.shape[1:], np.nan)
    return a.mean(0), se


def aggregate(per_image: list[dict], dims: int) -> dict:
    """Means and standard errors over images, bits/dim (PSNR in dB)."""
    t = per_image[0]["t"]
    if any(p["t"] != t for p in per_image):
        raise RuntimeError("images were coded with different schedules")
    col = {"model": "model_cum_bits", "schedule": "schedule_cum_bits", "chain": "chain_cum_bits",
           "stream": "stream_bits", "file": "file_bits"}
    rows = {}
    for key, field in col.items():
        m, se = _ms([np.asarray(p[field], float) / dims for p in per_image])
        rows[key], rows[key + "_se"] = m.tolist(), se.tolist()
    psnr = np.array([p["psnr_db"] for p in per_image], float)
    m, se = _ms(psnr)
    rows["psnr_db"], rows["psnr_db_se"] = m.tolist(), se.tolist()
    ll = {"model": [p["model_nelbo_bits"] for p in per_image],
          "schedule": [p["schedule_cum_bits"][-1] + p["schedule_x0_layer_bits"] for p in per_image],
          "chain": [p["lossless"]["chain_steps_bits"] + p["lossless"]["x0_layer_bits"] for p in per_image],
          "stream": [p["lossless"]["steps_stream_bits"] + p["lossless"]["x0_stream_bits"] for p in per_image],
          "file": [p["lossless"]["file_bits"] for p in per_image]}
    lossless = {}
    for k, v in ll.items():
        m, se = _ms(np.asarray(v, float)[:, None] / dims)
        lossless[k], lossless[k + "_se"] = float(m[0]), float(se[0])
    split = {}
    for k in ("steps_stream_bits", "x0_stream_bits", "header_bits", "termination_bits", "file_bits",
              "chain_steps_bits", "x0_layer_bits"):
        m, se = _ms(np.array([[p["lossless"][k]] for p in per_image], float) / dims)
        split[k.replace("_bits", "_bpd")], split[k.replace("_bits", "_bpd_se")] = float(m[0]), float(se[0])
    for k in ("schedule_x0_layer_bits", "model_decoder_bits"):
        m, se = _ms(np.array([[p[k]] for p in per_image], float) / dims)
        split[k.replace("_bits", "_bpd")], split[k.replace("_bits", "_bpd_se")] = float(m[0]), float(se[0])
    secs = {k: float(np.mean([p["seconds"][k] for p in per_image])) for k in per_image[0]["seconds"]}
    return {"n_images": len(per_image), "dims_per_image": dims, "t": t, "stops": rows, "lossless": lossless,
            "lossless_split": split, "seconds_per_image": secs,
            "model_evals_per_image": float(np.mean([p["model_evals"] for p in per_image]))}


def _pm(m, se, fmt="{:.4f}") -> str:
    if m is None or not math.isfinite(m):
        return "–"
    return fmt.format(m) + ("" if se is None or not math.isfinite(se) else " ± " + fmt.format(se))


def _ratio(a, b) -> str:
    """a / b, or – where b is below 1e-4 bits/dim (only the prior term: the ratio means nothing there)."""
    return "–" if not math.isfinite(a) or not math.isfinite(b) or abs(b) < 1e-4 else f"{a / b:.2f}"


def markdown(r: dict) -> str:
    g, s, ll, sp = r["aggregate"], r["aggregate"]["stops"], r["aggregate"]["lossless"], r["aggregate"]["lossless_split"]
    n = g["n_images"]
    lines = [f"# Bit ledger of the progressive codec ({n} images: {r['images_desc']})", "",
             f"    {r['command']}", "",
             f"Model `{r['model']}` (identity `{r['model_identity']}`), codec settings `{r['settings']}`, "
             f"format version {r['format_version']}. bits/dim, mean ± standard error over {n} images "
             "(bpp = 3 × bits/dim). Columns as in `eval/ledger.py`'s docstring: (a) the model's 1000-step ideal "
             f"(single steps, calibrated prior as the codec; {r['t_samples']} importance-sampled t per interval "
             f"between coded steps, exact where an interval is shorter: {g['model_evals_per_image']:.0f} network "
             "evaluations per image, unbiased), (b) the schedule's unbiased NELBO (fresh x_t per coded level), "
             "(c) the exact KL along the encoder's own chain, (d) the steps' bits on the rANS stack, (e) the whole "
             "valid file stopping there, (f) PSNR of x̂₀.", "",
             "| t | (a) model | (b) schedule | (c) chain | (d) stream | (e) file | (f) PSNR dB | b/a | c/b | d/c | e/d |",
             "|" + "---|" * 11]
    for j, t in enumerate(g["t"]):
        v = {k: (s[k][j], s[k + "_se"][j]) for k, _ in COLUMNS}
        lines.append(f"| {t} | " + " | ".join(_pm(*v[k]) for k, _ in COLUMNS) + f" | {_pm(s['psnr_db'][j], s['psnr_db_se'][j], '{:.2f}')} | "
                     f"{_ratio(v['schedule'][0], v['model'][0])} | {_ratio(v['chain'][0], v['schedule'][0])} | "
                     f"{_ratio(v['stream'][0], v['chain'][0])} | {_ratio(v['file'][0], v['stream'][0])} |")
    lines.append("| 0 (lossless) | " + " | ".join(_pm(ll[k], ll[k + "_se"]) for k, _ in COLUMNS) + " | ∞ | "
                 f"{_ratio(ll['schedule'], ll['model'])} | {_ratio(ll['chain'], ll['schedule'])} | "
                 f"{_ratio(ll['stream'], ll['chain'])} | {_ratio(ll['file'], ll['stream'])} |")
    lines += ["", "Lossless row: (a) the model's NELBO (all single steps + the discretized decoder term at t = 1, "
              f"{_pm(sp['model_decoder_bpd'], sp['model_decoder_bpd_se'])}); (b) + the x_0 layer's code length from "
              f"a fresh x_{{t_end}} ({_pm(sp['schedule_x0_layer_bpd'], sp['schedule_x0_layer_bpd_se'])}); (c) + "
              "the x_0 layer's code length on the encoder's chain.", "",
              "## The lossless file, split", "",
              "| part | ideal (chain) | coded |", "|---|---|---|",
              f"| rate: the coded steps | {_pm(sp['chain_steps_bpd'], sp['chain_steps_bpd_se'])} | "
              f"{_pm(sp['steps_stream_bpd'], sp['steps_stream_bpd_se'])} |",
              f"| x_0 layer | {_pm(sp['x0_layer_bpd'], sp['x0_layer_bpd_se'])} | "
              f"{_pm(sp['x0_stream_bpd'], sp['x0_stream_bpd_se'])} |",
              f"| header | – | {_pm(sp['header_bpd'], sp['header_bpd_se'])} |",
              f"| coder termination (file − header − stream) | – | "
              f"{_pm(sp['termination_bpd'], sp['termination_bpd_se'])} |",
              f"| total | {_pm(ll['chain'], ll['chain_se'])} | {_pm(sp['file_bpd'], sp['file_bpd_se'])} |", "",
              "Time per image (one torch thread, on a 2-core machine shared with other jobs): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in g["seconds_per_image"].items())
              + f"; {n * sum(g['seconds_per_image'].values()):.0f} s of compute in all ({r['cache']['hits']} of {n} "
              f"images read back from the per-image cache by the run that wrote this page, {r['wall_s']:.0f} s wall).",
              ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = CodecSettings()
    ap = argparse.ArgumentParser(prog="python -m eval.ledger", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", default=None, help="folder or .npz (default: the 500 dev test images)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--steps", type=int, default=d.n_steps)
    ap.add_argument("--t-end", type=int, default=d.t_end)
    ap.add_argument("--budget", type=int, default=d.budget_bits)
    ap.add_argument("--margin", type=int, default=d.margin_bits)
    ap.add_argument("--prior", default=d.prior, choices=("calibrated", "fixedlarge"))
    ap.add_argument("--seed", type=int, default=d.seed, help="codec seed")
    ap.add_argument("--t-samples", type=int, default=8,
                    help="(a): importance-sampled single steps per interval between coded steps")
    ap.add_argument("--mc-seed", type=int, default=0, help="noise seed of (a) and (b)")
    ap.add_argument("--verify", action="store_true", help="also decode every file and check it bit-exact")
    ap.add_argument("--batch", type=int, default=64, help="network batch for (a) and (b)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/results", help="writes <out>/ledger_dev{N}.{md,json}")
    ap.add_argument("--cache", default="eval/out/cache", help="per-image results (resume)")
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    from ddpmcodec.data import load_dev_set, load_images
    from ddpmcodec.network.model_io import load_model

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.t_samples < 1:
        raise InputError("--t-samples must be >= 1")
    images = load_dev_set() if args.images is None else load_images(args.images)
    images = images[args.offset: args.offset + args.limit]
    if len(images) == 0:
        raise InputError("no images selected (check --offset / --limit)")
    model = load_model(args.model, device=args.device)
    settings = CodecSettings(n_steps=args.steps, t_end=args.t_end, budget_bits=args.budget,
                             margin_bits=args.margin, seed=args.seed, prior=args.prior)
    cache = Cache(args.cache)
    per_image = []
    for i, im in enumerate(images):
        key = {"model": model.identity, "settings": asdict(settings), "image": image_digest(im[None]),
               "index": args.offset + i, "t_samples": args.t_samples, "mc_seed": args.mc_seed,
               "format": container.VERSION, "ledger": LEDGER_VERSION, "verify": args.verify}
        rec = cache.get_json("ledger", key)
        if rec is None:
            rec = ledger_image(model, im, settings, index=args.offset + i, t_samples=args.t_samples,
                               seed=args.mc_seed, verify=args.verify, batch=args.batch)
            cache.put_json("ledger", key, rec)
        per_image.append(rec)
        if not args.quiet:
            print(f"image {args.offset + i}: lossless {rec['lossless']['file_bits'] / im.size:.3f} bits/dim, "
                  f"{sum(rec['seconds'].values()):.1f} s", file=sys.stderr, flush=True)
    dims = int(images[0].size)
    src = "CIFAR-10 dev test set" if args.images is None else str(args.images)
    r = {"command": "python -m eval.ledger " + " ".join(argv), "model": model.name,
         "model_identity": model.identity, "images_desc": f"{src}, images {args.offset}..{args.offset + len(images) - 1}",
         "settings": asdict(settings), "format_version": container.VERSION, "t_samples": args.t_samples,
         "mc_seed": args.mc_seed, "threads": torch.get_num_threads(), "aggregate": aggregate(per_image, dims),
         "per_image": [_compact(p if len(per_image) <= PER_IMAGE_ARRAYS_MAX else _scalars(p)) for p in per_image],
         "columns": dict(COLUMNS)}
    r["wall_s"] = time.perf_counter() - t0
    r["cache"] = {"hits": cache.hits, "misses": cache.misses}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ledger_dev{len(images)}" if args.images is None and args.offset == 0 else \
        f"ledger_{Path(str(args.images or 'dev')).stem}_o{args.offset}_n{len(images)}"
    (out / f"{stem}.json").write_text(json.dumps(_finite(r), indent=1, allow_nan=False) + "\n")
    (out / f"{stem}.md").write_text(markdown(r))
    r["paths"] = [str(out / f"{stem}.md"), str(out / f"{stem}.json")]
    return r


def _scalars(p: dict) -> dict:
    """A per-image record without its per-stop-point arrays (lossless numbers and timings only)."""
    return {k: v for k, v in p.items() if not isinstance(v, list)}


def _compact(o, digits: int = 2):
    """A per-image record for the JSON: bits to 0.01, PSNR and seconds too (the cache keeps full precision)."""
    if isinstance(o, dict):
        return {k: _compact(v, digits) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_compact(v, digits) for v in o]
    if isinstance(o, float) and math.isfinite(o):
        return round(o, digits)
    return o


def _finite(o):
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.images is None:
            from ddpmcodec.data import DEV_FILE, shared_data_file

            try:
                shared_data_file(DEV_FILE)
            except InputError as exc:
                print(f"skipped: {exc} (pass --images to use other images)", file=sys.stderr)
                return 0
        r = run(args, argv)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(markdown(r))
        print("wrote " + ", ".join(r["paths"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
