"""The report's written outputs: CompressAI-style JSON per method, summary.json and the markdown report.

CompressAI result files look like ``{"name": ..., "description": ..., "results": {"bpp": [...], "psnr-rgb": [...],
"ms-ssim-rgb": [...], ...}}`` with one list entry per rate point; extra keys here (t, quality, rmse-pooled) are lists
of the same length. bpp counts whole files (8 * total bytes / total pixels); psnr-rgb is the mean over images of the
per-image PSNR (dB, 0..255, whole RGB image) unless the description says 'pooled'.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from eval.report.plots import PAPER_TABLE4

BPG_PUBLISHED = ((0.5, 21.7), (1.0, 26.6), (2.0, 31.8), (4.0, 37.5))  # (bpp, PSNR dB), notes section 14
PAPER_SPLIT = {"rate_bpd": 1.78, "distortion_bpd": 1.97, "total_bpd": 3.75, "rmse_0_255": 0.95}
LITERATURE_LOSSLESS = ("PNG ~5.87, WebP ~4.61, FLIF ~4.19, Bit-Swap 3.82, DDPM NELBO 3.75, IDDPM bits-back 2.99, "
                       "VDM 2.72")


def _num(v, digits=4):
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def _nums(a, digits=4) -> list:
    return [_num(v, digits) for v in a]


def finite(obj):
    """Recursively replace NaN / infinity by None so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj) -> Path:
    """Strict JSON (no NaN), indented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(obj), indent=1, allow_nan=False) + "\n")
    return path


# ---- CompressAI-style per-method results --------------------------------------------------------------------------
def classic_result(sweep: dict, images_desc: str) -> dict:
    pts = sweep["points"]
    res = {"bpp": _nums([p["bpp"] for p in pts]), "psnr-rgb": _nums([p["psnr_db"] for p in pts]),
           "quality": [p["quality"] for p in pts], "encoding_time": _nums([p["encode_s_per_image"] for p in pts], 6),
           "decoding_time": _nums([p["decode_s_per_image"] for p in pts], 6)}
    if all(p["ms_ssim"] is not None for p in pts):
        res["ms-ssim-rgb"] = _nums([p["ms_ssim"] for p in pts], 6)
    return {"name": sweep["name"], "description": f"{sweep['setting']}; {sweep['n_images']} images ({images_desc}); "
            f"whole files", "results": res}


def ideal_points(T: int) -> list[int]:
    """The t (1-based, decreasing) of the ideal curve's results file: ~100 log-spaced t plus the Table-4 rows."""
    ts = set(np.unique(np.round(np.geomspace(1, T, 90)).astype(int)).tolist())
    ts |= {T + 1 - k for k, _, _ in PAPER_TABLE4 if 1 <= k <= T}
    return sorted(ts, reverse=True)


def ideal_bound_result(ideal: dict, n: int, images_desc: str, ms_ssim: list | None = None) -> dict:
    """Subsampled to :func:`ideal_points` (entry order: decreasing t). ``ms_ssim``: mean MS-SSIM at those t
    (model.ideal_msssim), written as ``ms-ssim-rgb`` when given."""
    T = len(ideal["t"])
    ts = set(ideal_points(T))
    idx = [i for i, t in enumerate(ideal["t"]) if t in ts]
    extra = {}
    if ms_ssim is not None:
        if len(ms_ssim) != len(idx):
            raise ValueError("ms_ssim must have one value per ideal_points(T) entry")
        extra["ms-ssim-rgb"] = _nums(ms_ssim, 6)
    return {"name": "DDPM ideal (bound)",
            "description": f"cumulative KL rate to hold x_t (exact bound, all {T} t, fresh x_t ~ q(x_t|x_0) per t) "
                           f"and PSNR of the pooled MSE of x^_0 (clipped) at t; {n} images ({images_desc}); "
                           "no file: an ideal rate",
            "results": {"bpp": _nums([3 * ideal["rate_bpd"][i] for i in idx], 6),
                        "psnr-rgb": _nums([ideal["psnr_pooled_db"][i] for i in idx]),
                        "rmse-pooled": _nums([ideal["rmse"][i] for i in idx]), "t": [ideal["t"][i] for i in idx],
                        **extra}}


def coded_results(coded: dict, settings: dict, images_desc: str) -> tuple[dict, dict]:
    n, t = coded["n_images"], coded["t"]
    common = {"psnr-rgb": _nums(coded["psnr_db"]), "psnr-rgb-pooled": _nums(coded["psnr_pooled_db"]),
              "rmse-pooled": _nums(coded["rmse_pooled"]), "t": t}
    if coded.get("ms_ssim") is not None:
        common["ms-ssim-rgb"] = _nums(coded["ms_ssim"], 6)
    real = {"name": "DDPM progressive (coded)",
            "description": f"whole-file size of the valid file stopping after each coded step (header included), "
                           f"x^_0 at that t decoded; settings {settings}; {n} images ({images_desc}); lossless end "
                           f"point {coded['lossless_bpd']:.4f} bits/dim (not listed: PSNR infinite)",
            "results": {"bpp": _nums([3 * v for v in coded["coded_bpd"]], 6), **common,
                        "encoding_time": [_num(coded["encode_s_per_image"])] * len(t),
                        "decoding_time": [_num(coded["decode_s_per_image"])] * len(t)}}
    ideal = {"name": "DDPM progressive (ideal of the coded steps)",
             "description": f"cumulative exact KL of the codec's coded steps along the encoder's own chain (same "
                            f"images and reconstructions as the coded curve); {n} images ({images_desc})",
             "results": {"bpp": _nums([3 * v for v in coded["ideal_bpd"]], 6), **common}}
    return real, ideal


# ---- markdown -----------------------------------------------------------------------------------------------------
def psnr_at(bpp: list, psnr: list, target: float) -> float | None:
    """PSNR at ``target`` bpp, linear in log(bpp) between the two neighbouring points; None outside the curve."""
    pts = sorted((b, p) for b, p in zip(bpp, psnr) if b and b > 0 and p is not None and math.isfinite(p))
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= target <= b1:
            if b1 == b0:
                return p0
            return p0 + (p1 - p0) * (math.log(target) - math.log(b0)) / (math.log(b1) - math.log(b0))
    return None


def _f(v, fmt="{:.2f}", dash="–"):
    return dash if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def table4_rows(ideal: dict | None, coded: dict | None, T: int) -> list[str]:
    lines = ["| reverse steps | t | paper rate | paper RMSE | ideal rate (bound) | ideal RMSE | codec: coded step t' | "
             "ideal ΣKL to t' | coded file to t' | RMSE at t' | PSNR at t' (dB) |", "|" + "---|" * 11]
    paper = {k: (pr, pd) for k, pr, pd in PAPER_TABLE4} if T == 1000 else {}
    for k in sorted({max(1, round(T * f / 10)) for f in range(1, 11)}):
        t = T + 1 - k
        pr, pd = paper.get(k, (None, None))
        row = [str(k), str(t), _f(pr, "{:.5f}"), _f(pd)]
        if ideal is not None:
            i = ideal["t"].index(t)
            row += [f"{ideal['rate_bpd'][i]:.5f}", f"{ideal['rmse'][i]:.2f}"]
        else:
            row += ["not run", "not run"]
        if coded is not None:
            j = int(np.argmin(np.abs(np.array(coded["t"]) - t)))
            row += [str(coded["t"][j]), f"{coded['ideal_bpd'][j]:.5f}", f"{coded['coded_bpd'][j]:.5f}",
                    f"{coded['rmse_pooled'][j]:.2f}", _f(coded["psnr_db"][j])]
        else:
            row += ["not run"] * 5
        lines.append("| " + " | ".join(row) + " |")
    return lines


def stop_point_rows(coded: dict, every: int = 5) -> list[str]:
    lines = ["| t | ideal ΣKL (bits/dim) | coded file (bits/dim) | coded bpp | coded − ideal (bits/dim) | "
             "coded / ideal | PSNR (dB) | RMSE (pooled) |", "|" + "---|" * 8]
    n = len(coded["t"])
    for j in sorted(set(range(0, n, every)) | {n - 1}):
        i, c = coded["ideal_bpd"][j], coded["coded_bpd"][j]
        lines.append(f"| {coded['t'][j]} | {i:.4f} | {c:.4f} | {3 * c:.3f} | {c - i:+.4f} | "
                     f"{_f(c / i if i > 0 else None, '{:.3f}')} | {_f(coded['psnr_db'][j])} | "
                     f"{coded['rmse_pooled'][j]:.2f} |")
    return lines


def rd_table(results: list[dict], targets=(0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)) -> list[str]:
    lines = ["| method | " + " | ".join(f"{t:g} bpp" for t in targets) + " | bpp range |",
             "|" + "---|" * (len(targets) + 2)]
    for r in results:
        bpp, ps = r["results"]["bpp"], r["results"]["psnr-rgb"]
        vals = [_f(psnr_at(bpp, ps, t)) for t in targets]
        good = [b for b in bpp if b]
        lines.append(f"| {r['name']} | " + " | ".join(vals) + f" | {min(good):.2f}–{max(good):.2f} |")
    return lines


def lossless_rows(s: dict) -> list[str]:
    lines = ["| method | bits/dim | bpp | images | what is counted |", "|---|---|---|---|---|"]
    for r in s["lossless"]:
        lines.append(f"| {r['name']} | {_f(r.get('bpd'), '{:.3f}', r.get('status', '–'))} | "
                     f"{_f(None if r.get('bpd') is None else 3 * r['bpd'], '{:.2f}')} | {r.get('n_images', '–')} | "
                     f"{r['note']} |")
    return lines


def split_rows(s: dict) -> list[str]:
    """Rate / distortion / total / RMSE: Monte-Carlo split on many images, exact bound on the subset, the paper."""
    cols = []
    if s.get("split_summary"):
        m = s["split_summary"]
        cols.append((f"ours, {m['n_images']} images, {m['t_samples']} t/image (unbiased MC)", m))
    if s.get("bound_summary"):
        cols.append((f"ours, {s['bound_summary']['n_images']} images, exact (all t)", s["bound_summary"]))
    lines = ["| quantity | " + " | ".join(c for c, _ in cols) + " | paper (35.7M model, CIFAR-10 test) |",
             "|" + "---|" * (len(cols) + 2)]
    for label, key in (("rate: prior + Σ_{t≥2} KL (bits/dim)", "rate_bpd"),
                       ("distortion: decoder term at t=1 (bits/dim)", "distortion_bpd"),
                       ("total: NLL bound (bits/dim)", "total_bpd")):
        vals = [f"{b[key]:.3f} ± {_f(b.get(key + '_stderr'), '{:.3f}')}" for _, b in cols]
        lines.append(f"| {label} | " + " | ".join(vals) + f" | {PAPER_SPLIT[key]:.2f} |")
    lines.append("| RMSE of x̂₀ at t=1 (0..255) | " + " | ".join(f"{b['t1_rmse_0_255']:.3f}" for _, b in cols)
                 + f" | {PAPER_SPLIT['rmse_0_255']:.2f} |")
    return lines


def markdown(s: dict) -> str:
    """The report: every number states its image count; ideal (KL) and coded (file bytes) are kept apart."""
    n, nb, T = s["n_images"], s["n_bound"], s["T"]
    coded, ideal, b = s.get("coded"), s.get("ideal"), s.get("bound_summary")
    subset = " (a subset: the exact bound costs ~1000 U-Net evaluations per image)" if nb < n else ""
    out = [f"# DDPM codec report: {s['model']}", "",
           "Regenerate everything (cached parts are reused; add `--no-cache` to recompute):", "",
           f"    {s['command']}", "",
           "The full-size run (all 500 dev images for every part; a GPU makes it practical):", "",
           f"    {s['full_command']}", "",
           f"- Model `{s['model']}` (identity `{s['model_identity']}`), images: {s['images_desc']}.",
           f"- Images behind each number: coded curve, classic codecs and lossless baselines **{n}**; ideal curve "
           f"(exact bound, all {T} t) **{nb}**{subset}; rate/distortion split {s.get('n_split', 0)} "
           f"(Monte-Carlo over t) and {nb} (exact); progressive strip {s['n_strip']}.",
           f"- Codec settings: `{s['settings']}` (n_steps coded steps of equal expected KL from T down to t_end, "
           f"then x_0 coded exactly).",
           f"- Compute: {s['device']}, {s['threads']} torch thread(s); stage compute times (s, including those "
           f"reused from cache): {s['stage_seconds']}; wall time of the run that wrote this page: {s['wall_s']:.0f} s.",
           "", "**Ideal** = the sum of KL terms (what a perfect channel simulator would pay, no file). "
           "**Coded** = the exact size of a real, decodable file (header and everything included) truncated after "
           "that step. bpp = 3 × bits/dim. PSNR: dB on 0..255 over the whole RGB image, mean over images of the "
           "per-image PSNR unless marked *pooled* (PSNR of the MSE pooled over images, as the paper's RMSE).", ""]
    out += ["## 1. Progressive curve: ideal vs coded (paper Fig. 5 / Table 4)", "", "![Fig. 5 panels](fig5.png)", "",
            f"Table 4 rows (rates in bits/dim, cumulative from x_T down to x_t; RMSE of x̂₀ on 0..255, pooled). "
            f"Ideal: bound on {nb} images. Codec: the coded stop point t' nearest to t, {n} images.", ""]
    out += table4_rows(ideal, coded, T) + [""]
    if coded is not None:
        out += [f"## 2. Coded vs ideal at the codec's stop points ({n} images)", "",
                f"Header alone: {coded['header_bytes']} bytes ("
                f"{8 * coded['header_bytes'] / coded['dims_per_image']:.4f}"
                f" bits/dim). Encode {coded['encode_s_per_image']:.1f} s/image (U-Net share "
                f"{100 * coded['unet_share_encode']:.0f}%), decode {coded['decode_s_per_image']:.1f} s/image; every "
                "file was decoded and checked bit-exact.", ""] + stop_point_rows(coded) + [""]
    out += [f"## 3. Against classic codecs ({n} images)", "", "![PSNR and MS-SSIM vs bpp](rd.png)", "",
            "PSNR (dB) at given bpp, read off each curve (linear in log bpp between measured points; – outside the "
            "measured range):", ""] + rd_table(s["rd_results"]) + [""]
    if s.get("targets"):
        from eval.report.targets import target_rows

        out += [f"The *--target-bpp* row: one file per target and image, the one `ddpmcodec encode --target-bpp B` "
                "writes (the best within the budget of the default file's prefix, files with a schedule made for "
                "their stop, and the deeper lossy-only chain), decoded; means over "
                f"{s['targets']['n_images']} images (± standard error), encode time as the CLI runs it:", ""]
        out += target_rows(s["targets"]) + [""]
    if any(r["name"].startswith("HEVC intra") for r in s["rd_results"]):
        out += [f"Published BPG (HEVC intra) on CIFAR-10: {' / '.join(f'{p:.1f}' for _, p in BPG_PUBLISHED)} dB at "
                f"{' / '.join(f'{b:g}' for b, _ in BPG_PUBLISHED)} bpp (UQDM evaluation data), a raw bitstream with "
                "a few bytes of header: compare it with the *HEVC intra (payload only)* row; the *HEIF file* row "
                "counts the container's boxes too.", ""]
    if ideal is not None:
        gap = "" if coded is None else (
            " (on the coded curve the mean per-image PSNR is "
            f"{np.nanmean(np.array(coded['psnr_db'], float) - np.array(coded['psnr_pooled_db'], float)):.2f} dB "
            "above the pooled one, on average over stop points)")
        out += [f"The *DDPM ideal (bound)* row is the PSNR of the pooled MSE ({nb} images): the bound keeps only the "
                f"per-t mean MSE, so its PSNR is pessimistic next to the per-image means of the other rows{gap}.", ""]
    out += ["Settings (whole files counted, container and headers included):", ""]
    out += [f"- **{c['name']}**: {c['setting']}; qualities {[p['quality'] for p in c['points']]}."
            for c in s["classic"]]
    out += [f"- Skipped: {note}." for note in s["notes"]]
    out += [f"- MS-SSIM: {s['msssim']}. The DDPM curves use the same function: the coded curves on every decoded "
            "stop point (x̂₀ as the decoder writes it), the ideal (bound) curve on x̂₀ rounded to 8 bits from the same "
            "draws of x_t as the bound, at the t of its results file.",
            "- Grey markers: published CIFAR-10 numbers from the UQDM paper's evaluation (other images and models), "
            "for orientation only.", ""]
    out += ["## 4. Lossless", ""] + lossless_rows(s)
    out += ["", f"Literature, CIFAR-10 bits/dim: {LITERATURE_LOSSLESS}.", ""]
    out += ["## 5. The rate / distortion split (the paper's 1.78 / 1.97)", ""]
    out += split_rows(s) if (b or s.get("split_summary")) else ["not run (--bound-limit 0 --split-limit 0)"]
    out += ["", "Computed as the official `calc_bpd_loop` (ddpmcodec.bound). Rate = what the receiver pays to hold "
            "x_1 (the paper's 1.78), distortion = the discretized decoder's −log p(x_0|x_1) (1.97); ± is the "
            "standard error over images. The Monte-Carlo column samples t per image (importance sampling, "
            "unbiased; decoder term exact). The bundled model is a width-64 U-Net trained 27k steps, not the "
            "paper's 35.7M model trained 800k steps, so a larger total is expected.", ""]
    if s.get("strip"):
        out += [f"## 6. Progressive decoding ({s['n_strip']} images)", "", "![progressive strip](strip.png)", "",
                "Each frame is x̂₀ decoded from the real file truncated after the coded step at t (bpp of that "
                "truncated file under the frame).", ""]
    out += ["## Files", "",
            "- `results/*.json`: CompressAI-style results per method (`name`, `description`, `results.bpp`, "
            "`results.psnr-rgb`, `results.ms-ssim-rgb` where measured, ...).",
            "- `lossless.json`, `summary.json` (all settings, counts, timings and the numbers above).",
            "- `fig5.png`, `rd.png`, `strip.png`.", ""]
    return "\n".join(out)
