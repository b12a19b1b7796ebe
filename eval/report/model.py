"""The report's DDPM parts: the exact bound (ideal curve), the progressive codec (coded curve), strip frames.

All three are computed in chunks of images and cached (see ddpmcodec/batch/result_cache.py), so an interrupted run resumes and
a second run only reads. With ``ray`` (an address) and ``ref`` (the model as a ModelRef), the bound, ideal MS-SSIM and
codec chunks that are not cached yet run as Ray tasks (the same chunk functions, seeds and inputs as a local run),
each part cached by this process as it arrives. Units: rates in bits/dim (bpd); bpp = 3 * bpd for RGB; PSNR in dB on
0..255.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm import tqdm

from ddpmcodec.batch.ray_map import ModelRef
from ddpmcodec.bound import TERM_KEYS, BoundResult, model_bound
from ddpmcodec.codec.progressive import CodecSettings, coded_inputs, encode
from ddpmcodec.codec.decoding import decode_progressive
from eval.report import classic
from ddpmcodec.batch.result_cache import Cache, image_digest


def _chunks(n: int, size: int):
    for start in range(0, n, max(1, size)):
        yield start, min(n, start + max(1, size))


def _clean(a) -> list:
    return [None if v is None or not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]


def _arr(a) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in a], dtype=np.float64)


def _model(model):
    """A loaded model as given, or the model a ModelRef names (loaded once per process)."""
    return model.load() if isinstance(model, ModelRef) else model


# ---- the ideal curve: the exact bound, all T timesteps -----------------------------------------------------------
def bound_chunk(model, images: np.ndarray, seed: int, t_samples: int | None, batch_size: int) -> dict:
    """One cached part of :func:`bound_exact`: the bound of a chunk of images as JSON data (model or ModelRef)."""
    start = time.perf_counter()
    res = model_bound(_model(model), images, t_samples=t_samples, seed=seed, batch_size=batch_size, progress=False)
    return {"T": res.T, "prior": res.prior.tolist(), "rate": res.rate.tolist(), "rate_clip": res.rate_clip.tolist(),
            "distortion": res.distortion.tolist(), "mse_t1_clip": res.mse_t1_clip.tolist(),
            "count": res.per_t_count.tolist(), "mc_var": None if res.mc_var is None else res.mc_var.tolist(),
            "per_t": {k: _clean(v) for k, v in res.per_t.items()}, "seconds": time.perf_counter() - start}


def bound_exact(model, images: np.ndarray, offset: int, cache: Cache, *, chunk: int = 4, seed: int = 0,
                batch_size: int = 64, t_samples: int | None = None, progress: bool = False,
                ray: str | None = None, ref: ModelRef | None = None) -> tuple[BoundResult, float]:
    """The bound of ``images`` (the dataset's images offset..offset+N-1), merged over cached chunks of images.

    Exact (every t) by default; ``t_samples=K`` gives the unbiased Monte-Carlo estimate with K importance-sampled t
    per image (exact decoder term). Chunk noise uses seed + the dataset index of the chunk's first image, so chunks
    draw independent noise. ray, ref: missing chunks as Ray tasks (module doc). Returns (result, compute seconds
    summed over chunks, including cached ones).
    """
    mode = "exact" if t_samples is None else f"mc{t_samples}"
    spans = list(_chunks(len(images), chunk))
    keys = [{"model": model.identity, "images": image_digest(images[a:b]), "seed": seed + offset + a, "mode": mode}
            for a, b in spans]
    calls = [(images[a:b], seed + offset + a, t_samples, batch_size) for a, b in spans]
    with tqdm(total=len(images), desc=f"bound ({'exact, all t' if t_samples is None else f'{t_samples} t/image'})",
              unit="img", disable=not progress) as bar:
        parts = cache.parts("bound", keys, bound_chunk, calls, model, ray=ray, ref=ref, bar=bar,
                            sizes=[b - a for a, b in spans])
    return merge_bounds(parts, seed, t_samples), float(sum(p["seconds"] for p in parts))


def merge_bounds(parts: list[dict], seed: int = 0, t_samples: int | None = None) -> BoundResult:
    """One BoundResult from chunk dicts: per-image arrays concatenated, per-t means count-weighted."""
    cat = lambda k: np.concatenate([np.asarray(p[k], dtype=np.float64) for p in parts])  # noqa: E731
    counts = np.stack([np.asarray(p["count"], dtype=np.float64) for p in parts])
    total = counts.sum(0)
    per_t = {}
    for k in TERM_KEYS:
        vals = np.stack([np.nan_to_num(_arr(p["per_t"][k])) for p in parts])
        with np.errstate(invalid="ignore", divide="ignore"):
            per_t[k] = np.where(total > 0, (vals * counts).sum(0) / total, np.nan)
    mc = t_samples is not None
    return BoundResult(T=int(parts[0]["T"]), mode="mc" if mc else "exact", t_samples=t_samples,
                       t_sampling="importance" if mc else None, seed=seed, prior=cat("prior"), rate=cat("rate"),
                       rate_clip=cat("rate_clip"), distortion=cat("distortion"), mse_t1_clip=cat("mse_t1_clip"),
                       per_t=per_t, per_t_count=total, mc_var=cat("mc_var") if mc else None)


def ideal_curve(result: BoundResult) -> dict:
    """Per 1-based t = T..1: cumulative rate to hold x_t (bpd) and the pooled RMSE / PSNR of x^_0 at t."""
    T = result.T
    t = np.arange(T, 0, -1)
    rate = result.cumulative_rate()[t - 1]
    rmse = np.sqrt(result.per_t["mse_x0_clip"][t - 1]) * 127.5
    return {"t": t.tolist(), "steps_done": (T + 1 - t).tolist(), "rate_bpd": rate.tolist(),
            "rmse": rmse.tolist(), "psnr_pooled_db": (20 * np.log10(255.0 / rmse)).tolist()}


def bound_x0_hat(model, images: np.ndarray, ts: list[int], *, seed: int, batch_size: int = 64):
    """x^_0 (clipped to [-1, 1], float64, (N, K, C, H, W)) at each t in ``ts`` from the x_t ~ q(x_t|x_0) that
    ddpmcodec.bound's exact mode draws for ``images`` with this seed (noise pair_noise(seed, image, slot = t))."""
    from ddpmcodec.bound import model_eps_fn, pair_noise
    from ddpmcodec.diffusion import Schedule, q_sample_batched

    sched = Schedule(model.diffusion)
    eps_fn = model_eps_fn(model)
    x0_all = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    shape = tuple(x0_all.shape[1:])
    pairs = [(i, int(t)) for i in range(len(images)) for t in ts]
    out = []
    for start in range(0, len(pairs), batch_size):
        sl = pairs[start:start + batch_size]
        idx = torch.tensor([i for i, _ in sl])
        tt = torch.tensor([t for _, t in sl], dtype=torch.long)
        noise = torch.stack([pair_noise(seed, i, t, shape) for i, t in sl])
        xt = q_sample_batched(sched, x0_all[idx], tt, noise)
        with torch.no_grad():
            eps = eps_fn(xt.to(model.device), tt.to(model.device)).float().cpu()
        sab = torch.as_tensor(sched.sqrt_alpha_bar[tt.numpy()], dtype=torch.float64).view(-1, 1, 1, 1)
        s1ab = torch.as_tensor(sched.sqrt_one_minus_alpha_bar[tt.numpy()], dtype=torch.float64).view(-1, 1, 1, 1)
        out.append(((xt.double() - s1ab * eps.double()) / sab).clamp(-1.0, 1.0))
    return torch.cat(out).view(len(images), len(ts), *shape)


def msssim_chunk(model, images: np.ndarray, ts: list[int], seed: int, batch_size: int) -> dict:
    """One cached part of :func:`ideal_msssim`: {"sum": MS-SSIM summed over the chunk's images, per t}."""
    x0_hat = bound_x0_hat(_model(model), images, ts, seed=seed, batch_size=batch_size)
    dec = ((x0_hat + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    dec = dec.permute(0, 1, 3, 4, 2).numpy().reshape(-1, *images.shape[1:])
    vals = classic.msssim_per_image(dec, np.repeat(images, len(ts), axis=0))
    return {"sum": vals.reshape(len(images), len(ts)).sum(0).tolist()}


def ideal_msssim(model, images: np.ndarray, offset: int, ts: list[int], cache: Cache, *, chunk: int = 4,
                 seed: int = 0, batch_size: int = 64, progress: bool = False, ray: str | None = None,
                 ref: ModelRef | None = None) -> list[float] | None:
    """Mean MS-SSIM over images of x^_0 (clipped, rounded to uint8) at each 1-based t in ``ts``, from the very
    x_t ~ q(x_t|x_0) that :func:`bound_exact` (exact mode, same chunk and seed) draws (:func:`bound_x0_hat`), so it
    belongs to the same reconstructions whose pooled MSE gives the ideal curve's PSNR. MS-SSIM as the classic
    codecs' (:data:`classic.MSSSIM_OPTIONS`). None when MS-SSIM is unavailable (torchmetrics missing, < 32 px).
    ray, ref: missing chunks as Ray tasks (module doc)."""
    if not len(images) or not classic.msssim_available() or min(images.shape[1:3]) < 32:
        return None
    ts = list(map(int, ts))
    spans = list(_chunks(len(images), chunk))
    keys = [{"model": model.identity, "images": image_digest(images[a:b]), "seed": seed + offset + a, "ts": ts,
             "msssim": classic.MSSSIM_OPTIONS} for a, b in spans]
    calls = [(images[a:b], ts, seed + offset + a, batch_size) for a, b in spans]
    with tqdm(total=len(images), desc=f"ideal MS-SSIM ({len(ts)} t)", unit="img", disable=not progress) as bar:
        parts = cache.parts("ideal_msssim", keys, msssim_chunk, calls, model, ray=ray, ref=ref, bar=bar,
                            sizes=[b - a for a, b in spans])
    sums = np.zeros(len(ts))
    for part in parts:
        sums += np.asarray(part["sum"])
    return (sums / len(images)).tolist()


# ---- the coded curve: the progressive codec, encode + progressive decode per image ---------------------------------
def coded_image(model, pixels: np.ndarray, settings: CodecSettings) -> dict:
    """Encode one image, decode every stop point of the file (lossless end checked bit-exact) and measure it.

    t: coded stop points (T..t_end, then 0 = lossless); ideal_bpd: cumulative exact KL of the coded steps along the
    encoder's chain (+ the x_0 layer's code length at t=0); coded_bpd: whole valid file stopping there; psnr_db and
    ms_ssim: of the decoded x^_0 at t against the original (None at t=0; MS-SSIM as the classic codecs')."""
    dims = pixels.size
    res = encode(pixels, model, settings)
    start = time.perf_counter()
    frames = list(decode_progressive(res.data, model, every_step=True))
    dec_s = time.perf_counter() - start
    if frames[-1].t != 0 or not np.array_equal(frames[-1].pixels, pixels):
        raise RuntimeError("lossless round trip failed")
    if [f.t for f in frames] != [s.t for s in res.steps]:
        raise RuntimeError("decoder stop points differ from the encoder's")
    lossy = np.stack([f.pixels for f in frames if f.t > 0])
    ms = classic.msssim_per_image(lossy, np.broadcast_to(pixels, lossy.shape))
    ms_list = [None] * len(frames) if ms is None else [float(v) for v in ms] + [None]
    return {"t": [s.t for s in res.steps], "ideal_bpd": (np.cumsum([s.ideal_bits for s in res.steps]) / dims).tolist(),
            "coded_bpd": [8 * s.bytes_if_stopped / dims for s in res.steps],
            "psnr_db": [None if not math.isfinite(s.psnr) else float(s.psnr) for s in res.steps],
            "ms_ssim": ms_list, "bytes": len(res.data), "header_bytes": int(res.steps[0].bytes_if_stopped),
            "encode_s": res.seconds, "decode_s": dec_s, "unet_s": res.unet_seconds}


def coded_chunk(model, images: np.ndarray, first_index: int, settings: CodecSettings, tick=None) -> list[dict]:
    """One cached part of :func:`coded_per_image`: :func:`coded_image` of each image (model or ModelRef), with
    "index" from first_index; tick() after each image."""
    model, part = _model(model), []
    for i, im in enumerate(images):
        part.append({"index": first_index + i, **coded_image(model, im, settings)})
        if tick:
            tick()
    return part


def coded_per_image(model, images: np.ndarray, offset: int, settings: CodecSettings, cache: Cache, *,
                    chunk: int = 10, progress: bool = False, ray: str | None = None,
                    ref: ModelRef | None = None) -> list[dict]:
    """:func:`coded_image` on each image (lossless round trip verified), cached per chunk of images.

    Each dict: index, t, ideal_bpd, coded_bpd, psnr_db, ms_ssim, bytes (lossless file), header_bytes (the file
    with no steps), encode_s, decode_s (every stop point decoded), unet_s. ray, ref: missing chunks as Ray tasks.
    """
    spans = list(_chunks(len(images), chunk))
    keys = [{**coded_inputs(model, settings), "images": image_digest(images[a:b]),
             "msssim": classic.MSSSIM_OPTIONS if classic.msssim_available() else None} for a, b in spans]
    calls = [(images[a:b], offset + a, settings) for a, b in spans]
    with tqdm(total=len(images), desc="codec (encode+decode)", unit="img", disable=not progress) as bar:
        parts = cache.parts("coded", keys, coded_chunk, calls, model, ray=ray, ref=ref, bar=bar,
                            sizes=[b - a for a, b in spans], local_tick=lambda: bar.update(1))
    return [p for part in parts for p in part]


def coded_curve(per_image: list[dict], dims_per_image: int) -> dict:
    """Means over images at every coded stop point (lossy points only) plus the lossless end point."""
    t = per_image[0]["t"]
    if any(p["t"] != t for p in per_image):
        raise RuntimeError("images were coded with different step schedules; cannot average stop points")
    ideal = np.array([p["ideal_bpd"] for p in per_image])
    coded = np.array([p["coded_bpd"] for p in per_image])
    psnr = np.array([_arr(p["psnr_db"]) for p in per_image])
    lossy = np.array(t) > 0
    mse = 255.0 ** 2 * 10.0 ** (-psnr[:, lossy] / 10.0)  # per-image MSE back from per-image PSNR (exact)
    rmse_pooled = np.sqrt(mse.mean(0))
    n = len(per_image)
    ll = coded[:, ~lossy][:, -1] if (~lossy).any() else coded[:, -1]
    col = lambda k: np.array([p[k] for p in per_image], dtype=np.float64)  # noqa: E731
    ms = np.array([_arr(p.get("ms_ssim") or [None] * len(t)) for p in per_image])[:, lossy]
    has_ms = bool(np.isfinite(ms).all())
    return {"n_images": n, "t": [int(x) for x in np.array(t)[lossy]],
            "ms_ssim": ms.mean(0).tolist() if has_ms else None,
            "ms_ssim_stderr": _stderr(ms).tolist() if has_ms else None,
            "ideal_bpd": ideal[:, lossy].mean(0).tolist(), "coded_bpd": coded[:, lossy].mean(0).tolist(),
            "psnr_db": psnr[:, lossy].mean(0).tolist(), "psnr_db_stderr": _stderr(psnr[:, lossy]).tolist(),
            "rmse_pooled": rmse_pooled.tolist(), "psnr_pooled_db": (20 * np.log10(255.0 / rmse_pooled)).tolist(),
            "lossless_bpd": float(ll.mean()), "lossless_bpd_stderr": float(_stderr(ll[:, None])[0]),
            "lossless_ideal_bpd": float(ideal[:, -1].mean()), "header_bytes": int(per_image[0]["header_bytes"]),
            "encode_s_per_image": float(col("encode_s").mean()),
            "decode_s_per_image": float(np.nanmean(col("decode_s"))),
            "unet_share_encode": float(col("unet_s").sum() / col("encode_s").sum()),
            "dims_per_image": dims_per_image}


def _stderr(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    return a.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(a.shape[1], np.nan)


# ---- the progressive strip: x^_0 at chosen t, decoded from the real file ----------------------------------------
def strip_frames(model, images: np.ndarray, settings: CodecSettings, want_t: list[int], cache: Cache) -> dict:
    """Encode each image, decode progressively and keep x^_0 at the coded steps nearest to ``want_t``.

    Returns arrays: frames (N, K, H, W, 3) uint8, t (K,) coded t of each column (shared schedule), bytes (N, K)
    the file bytes read to reach each frame, original (N, H, W, 3), seconds (compute time, scalar).
    """
    inputs = {**coded_inputs(model, settings), "images": image_digest(images), "want_t": list(want_t)}
    hit = cache.get_npz("strip", inputs)
    if hit is not None:
        return hit
    frames, nbytes, cols = [], [], None
    start = time.perf_counter()
    for im in images:
        res = encode(im, model, settings)
        steps = list(decode_progressive(res.data, model, every_step=True))
        if not np.array_equal(steps[-1].pixels, im):
            raise RuntimeError("strip image: lossless round trip failed")
        if cols is None:
            ts = np.array([s.t for s in steps])
            cols = sorted({int(np.argmin(np.abs(ts - w) + (ts == 0) * 10 ** 6)) for w in want_t}, key=lambda j: -ts[j])
        frames.append(np.stack([steps[j].pixels for j in cols]))
        nbytes.append([steps[j].bytes_read for j in cols])
    out = {"frames": np.stack(frames), "t": np.array([steps[j].t for j in cols]), "bytes": np.array(nbytes),
           "original": np.ascontiguousarray(images), "seconds": np.array(time.perf_counter() - start)}
    cache.put_npz("strip", inputs, out)
    return out
