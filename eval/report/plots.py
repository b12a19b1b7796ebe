"""The report's PNG figures (matplotlib, Agg): Fig. 5's three panels, PSNR / MS-SSIM vs bpp, the progressive strip."""
from __future__ import annotations

from pathlib import Path

import numpy as np

PAPER_TABLE4 = [(100, 0.00000, 67.60), (200, 0.00013, 60.97), (300, 0.00081, 54.19), (400, 0.00282, 46.13),
                (500, 0.00716, 38.03), (600, 0.01507, 30.81), (700, 0.02866, 24.44), (800, 0.05415, 18.47),
                (900, 0.11994, 12.02), (1000, 1.77581, 0.95)]  # (reverse steps, rate bits/dim, RMSE 0..255)
# PSNR (dB) at bpp on CIFAR-10 32x32 from the UQDM paper's evaluation (notes section 9): other images and models.
LITERATURE = {"BPG (UQDM eval)": [(0.33, 19.3), (0.5, 21.7), (0.74, 25.0), (1.0, 26.6), (1.74, 31.0), (2.0, 31.8),
                                   (4.0, 37.5)],  # notes sections 9 and 14
              "UQDM T=4 (UQDM eval)": [(0.85, 21.9), (2.78, 31.2)], "VDM ideal (UQDM eval)": [(0.49, 27.4)]}
COLORS = {"bound": "#1f77b4", "chain": "#2ca02c", "coded": "#d62728", "target": "#000000", "paper": "black"}
CLASSIC_COLORS = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig5(ideal: dict | None, coded: dict | None, path: str | Path, *, n_bound: int = 0, n_coded: int = 0,
         T: int = 1000) -> Path:
    """Paper Fig. 5: distortion (RMSE) vs rate, rate vs reverse steps, distortion vs reverse steps.

    ideal: model.ideal_curve (bound, all t); coded: model.coded_curve (stop points of the codec).
    Reverse steps done = T + 1 - t (as the paper's Table 4: after 1000 steps the receiver holds x_1).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), dpi=100)
    curves = []
    if ideal is not None:
        curves.append((f"ideal: bound, all {T} steps ({n_bound} img)", np.array(ideal["steps_done"]),
                       np.array(ideal["rate_bpd"]), np.array(ideal["rmse"]), COLORS["bound"], "-"))
    if coded is not None:
        steps = T + 1 - np.array(coded["t"])
        curves.append((f"ideal: ΣKL of the codec's {len(steps) - 1} coded steps ({n_coded} img)", steps,
                       np.array(coded["ideal_bpd"]), np.array(coded["rmse_pooled"]), COLORS["chain"], "--"))
        curves.append((f"coded: real file bytes ({n_coded} img)", steps, np.array(coded["coded_bpd"]),
                       np.array(coded["rmse_pooled"]), COLORS["coded"], "-"))
    pk, pr, pd = (np.array(c) for c in zip(*PAPER_TABLE4))
    for label, steps, rate, rmse, color, ls in curves:
        marker = "." if len(steps) < 200 else None
        axes[0].plot(rate, rmse, ls, color=color, marker=marker, ms=4, label=label)
        axes[1].plot(steps, rate, ls, color=color, marker=marker, ms=4, label=label)
        axes[2].plot(steps, rmse, ls, color=color, marker=marker, ms=4, label=label)
    for ax, (x, y) in zip(axes, ((pr, pd), (pk, pr), (pk, pd))):
        if T == 1000:
            ax.plot(x, y, "o", mfc="none", color=COLORS["paper"], label="paper Table 4 (CIFAR-10 test, 35.7M model)")
        ax.grid(True, alpha=0.3)
    axes[0].set(xlabel="rate (bits/dim)", ylabel="distortion: RMSE of x̂₀ (0..255)", title="distortion vs rate")
    axes[1].set(xlabel="reverse steps done (T + 1 − t)", ylabel="rate (bits/dim)", title="rate vs step")
    axes[2].set(xlabel="reverse steps done (T + 1 − t)", ylabel="distortion: RMSE of x̂₀ (0..255)",
                title="distortion vs step")
    axes[0].legend(fontsize=7.5, loc="upper right")
    fig.suptitle("Progressive coding, DDPM Fig. 5: rate = bits to reach x_t, distortion = RMSE of x̂₀(x_t) "
                 "(RMSE pooled over images)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _db(ms: np.ndarray) -> np.ndarray:
    return -10.0 * np.log10(np.clip(1.0 - ms, 1e-12, None))


def rd_curves(classic: list[dict], ideal: dict | None, coded: dict | None, path: str | Path, *,
              n_bound: int = 0, literature: bool = True, targets: dict | None = None) -> Path:
    """PSNR vs bpp (left) and MS-SSIM (dB = -10 log10(1 - MS-SSIM)) vs bpp (right), log bpp axis.

    classic: classic.sweep dicts; DDPM curves: mean per-image PSNR for the codec (coded and its own ideal),
    pooled-MSE PSNR for the bound (the bound stores per-t mean MSE only).
    """
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.4), dpi=100)
    for c, m, color in zip(classic, "svD^<>ph*", CLASSIC_COLORS):
        pts = c["points"]
        bpp = [p["bpp"] for p in pts]
        a1.plot(bpp, [p["psnr_db"] for p in pts], "-", marker=m, ms=4, lw=1.1, color=color, label=c["name"])
        if all(p["ms_ssim"] is not None for p in pts):
            a2.plot(bpp, _db(np.array([p["ms_ssim"] for p in pts])), "-", marker=m, ms=4, lw=1.1, color=color,
                    label=c["name"])
    if ideal is not None:
        bpp = 3 * np.array(ideal["rate_bpd"])
        keep = bpp >= 0.02
        a1.plot(bpp[keep], np.array(ideal["psnr_pooled_db"])[keep], "-", color=COLORS["bound"], lw=2,
                label=f"DDPM ideal: bound ΣKL, PSNR of pooled MSE ({n_bound} img)")
        if ideal.get("ms_ssim") is not None:
            at = {t: i for i, t in enumerate(ideal["t"])}
            idx = [at[t] for t in ideal["msssim_t"]]
            x, y = bpp[idx], np.array(ideal["ms_ssim"], dtype=float)
            a2.plot(x[x >= 0.02], _db(y[x >= 0.02]), "-", color=COLORS["bound"], lw=2,
                    label=f"DDPM ideal: bound ΣKL ({n_bound} img)")
    if coded is not None:
        n = coded["n_images"]
        a1.plot(3 * np.array(coded["ideal_bpd"][1:]), coded["psnr_db"][1:], "--", color=COLORS["chain"], lw=2,
                label=f"DDPM ideal: ΣKL of the coded steps ({n} img)")
        a1.plot(3 * np.array(coded["coded_bpd"]), coded["psnr_db"], "-", color=COLORS["coded"], lw=2.2,
                marker=".", ms=5, label=f"DDPM coded: real file bytes ({n} img)")
        if coded.get("ms_ssim") is not None:
            ms = _db(np.array(coded["ms_ssim"], dtype=float))
            a2.plot(3 * np.array(coded["ideal_bpd"][1:]), ms[1:], "--", color=COLORS["chain"], lw=2,
                    label=f"DDPM ideal: ΣKL of the coded steps ({n} img)")
            a2.plot(3 * np.array(coded["coded_bpd"]), ms, "-", color=COLORS["coded"], lw=2.2, marker=".", ms=5,
                    label=f"DDPM coded: real file bytes ({n} img)")
    if targets is not None:
        keep = [j for j, p in enumerate(targets["psnr_db"]) if p is not None and np.isfinite(p)]
        x = np.array(targets["bpp"])[keep]
        label = f"DDPM coded: --target-bpp, one file per target ({targets['n_images']} img)"
        a1.plot(x, np.array(targets["psnr_db"])[keep], "-", color=COLORS["target"], lw=1.8, marker="o", ms=6,
                label=label)
        if all(targets["ms_ssim"][j] is not None for j in keep):
            a2.plot(x, _db(np.array([targets["ms_ssim"][j] for j in keep])), "-", color=COLORS["target"], lw=1.8,
                    marker="o", ms=6, label=label)
    if literature:
        for (label, pts), m in zip(LITERATURE.items(), "xP+"):
            x, y = zip(*pts)
            a1.plot(x, y, m, color="0.45", ms=7, label=label)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlim(0.1, 16)
        ax.set_xlabel("bits per pixel (whole files; RGB pixel = 3 dims)")
        ax.grid(True, which="both", alpha=0.3)
    a1.set_ylim(5, 50)
    a1.set(ylabel="PSNR (dB, RGB, mean over images)", title="PSNR vs bpp")
    a2.set(ylabel="MS-SSIM (dB) = −10·log10(1 − MS-SSIM)", title="MS-SSIM vs bpp (3 scales, same function for all)")
    a1.legend(fontsize=7.5, loc="upper left")
    a2.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def strip(frames: dict, path: str | Path) -> Path:
    """Rows = images; columns = the original, then x̂₀ decoded at each chosen t (file bpp under each frame)."""
    plt = _plt()
    f, t, nbytes, orig = frames["frames"], frames["t"], frames["bytes"], frames["original"]
    n, k, h, w, _ = f.shape
    fig, axes = plt.subplots(n, k + 1, figsize=(1.05 * (k + 1), 1.32 * n + 0.35), dpi=100, squeeze=False)
    for i in range(n):
        cells = [(orig[i], "original" if i == 0 else "", "")]
        cells += [(f[i, j], f"t={int(t[j])}" if i == 0 else "", f"{8 * nbytes[i, j] / (h * w):.2f} bpp")
                  for j in range(k)]
        for ax, (img, title, foot) in zip(axes[i], cells):
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if title:
                ax.set_title(title, fontsize=8)
            if foot:
                ax.set_xlabel(foot, fontsize=7, labelpad=1)
    fig.suptitle("x̂₀ decoded from truncated real files (progressive), original on the left", fontsize=9)
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2, rect=(0, 0, 1, 1 - 0.3 / (1.32 * n + 0.35)))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
