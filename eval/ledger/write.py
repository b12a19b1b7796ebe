"""Aggregating per-image ledger records (means, standard errors) and the Markdown page."""
from __future__ import annotations

import math

import numpy as np
from eval.ledger.rates import COLUMNS



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
             "(bpp = 3 × bits/dim). Columns as in `eval/ledger/__init__.py`'s docstring: (a) the model's 1000-step ideal "
             f"(single steps, calibrated prior as the codec; {r['t_samples']} importance-sampled t per interval "
             f"between coded steps, exact where an interval is shorter: {g['model_evals_per_image']:.0f} network "
             "evaluations per image, unbiased), (b) the schedule's unbiased NELBO (fresh x_t per coded level), "
             "(c) the exact KL along the encoder's own chain, (d) the steps' bits on the rANS stack, (e) the whole "
             "valid file stopping there, (f) PSNR of x̂₀.", "",
             "| t | (a) model | (b) schedule | (c) chain | (d) stream | (e) file | (f) PSNR dB | b/a | c/b | d/c | e/d |",
             "|" + "---|" * 11]
    for j, t in enumerate(g["t"]):
        v = {k: (s[k][j], s[k + "_se"][j]) for k, _ in COLUMNS}
        psnr = _pm(s['psnr_db'][j], s['psnr_db_se'][j], '{:.2f}')
        lines.append(f"| {t} | " + " | ".join(_pm(*v[k]) for k, _ in COLUMNS) + f" | {psnr} | "
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


