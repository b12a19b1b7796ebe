"""The exact x_0 layer: pixels under a discretized Gaussian around x^_0 with causal channel and spatial context.

The mean of sub-pixel (i, j, c) is x^_0's mean shifted by a linear prediction from already decoded residuals: the
left and upper neighbours' residuals of the same channel, and the residuals of the earlier channels of the same
pixel (R before G before B). With it the whole lossless file on the first 6 dev images went from 4.961 to
4.749 bits/dim (`python -m eval.codec_bench --limit 6`, before and after).
The scale adapts per sub-pixel: its index in entropy.sigma_from_index is the channel's base index plus
alpha/32 times a context, the sum of two integer log2 measures, of how much x^_0 changes around the pixel (denoising
errors grow at edges) and of the left and upper neighbours' decoded residuals (errors cluster): on dev images
100-107 the lossless files went from 4.636 to 4.571 bits/dim (`--limit 8 --offset 100`, before and after).
Everything a mean or a scale depends on is an integer (means in 1/8 grey level, coefficients in 1/32), so encoder
and decoder compute identical probabilities. Coefficients, base scales and alpha are fitted per file (least squares,
then the scales with the shortest code) and sent on the stack just before the pixels: 95 bits.

Decoding runs over anti-diagonals i + j = d: the context of a diagonal lies on the previous one, so each
(diagonal, channel) is one vector pop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.entropy import rans as entropy
from ddpmcodec.images import from_tiles

COEF_DENOM = 32  # coefficient k means k / 32
ALPHA_LEVELS, ALPHA_DENOM = 32, 32  # scale slope alpha in 0..31, units of 1/32 sigma-index step per context unit
# features per channel, as (dy, dx, channel) offsets of known residuals
FEATURES = (((0, -1, 0), (-1, 0, 0)),
            ((0, 0, 0), (0, -1, 1), (-1, 0, 1)),
            ((0, 0, 0), (0, 0, 1), (0, -1, 2), (-1, 0, 2)))
N_COEFS = sum(len(f) for f in FEATURES)
_PARAM_MODELS = None


@dataclass(frozen=True)
class PixelParams:
    sigma: tuple[int, int, int]  # per-channel base index into entropy.sigma_from_index
    coefs: tuple[int, ...]  # N_COEFS integers in [-128, 127], units of 1 / COEF_DENOM
    alpha: int = 0  # scale slope, 0..ALPHA_LEVELS-1 (0: one scale per channel)

    def symbols(self) -> np.ndarray:
        return np.array(list(self.sigma) + [self.alpha] + [c + 128 for c in self.coefs], dtype=np.int32)

    @classmethod
    def from_symbols(cls, s: np.ndarray) -> "PixelParams":
        return cls(tuple(int(v) for v in s[:3]), tuple(int(v) - 128 for v in s[4:]), int(s[3]))


def _param_models():
    global _PARAM_MODELS  # immutable constriction models, built once
    if _PARAM_MODELS is None:
        _PARAM_MODELS = (entropy._MODELS.Uniform(entropy.SIGMA_TABLE_SIZE), entropy._MODELS.Uniform(ALPHA_LEVELS),
                         entropy._MODELS.Uniform(256))
    return _PARAM_MODELS


def mean_rows(x0_hat: torch.Tensor, height: int, width: int) -> np.ndarray:
    """x^_0 tiles (N, 3, R, R) in [-1, 1] -> the layer's base mean rows (H, W, 3) int64 (grid 1/8 grey level)."""
    means = (from_tiles(x0_hat, height, width).double() + 1.0) * 127.5
    return entropy.quantize_pixel_means(means.numpy())


def residual8(pixels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Residual in 1/8 grey levels (int64): 8 x - (row - 4), where row/8 - 1/2 is the quantized mean."""
    return 8 * pixels.astype(np.int64) - rows + 4


def _shifted(r8: np.ndarray, dy: int, dx: int, c: int) -> np.ndarray:
    """Residual plane of channel c at offset (dy, dx), zero outside the image; (H, W) int64."""
    h, w, _ = r8.shape
    out = np.zeros((h, w), dtype=np.int64)
    out[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)] = \
        r8[max(0, dy): h + min(0, dy), max(0, dx): w + min(0, dx), c]
    return out


def conditional_rows(rows: np.ndarray, r8: np.ndarray, coefs: tuple[int, ...], c: int) -> np.ndarray:
    """Mean rows of channel c given all residuals it may depend on (encoder: every residual is known)."""
    k0 = sum(len(f) for f in FEATURES[:c])
    acc = np.zeros(rows.shape[:2], dtype=np.int64)
    for k, (dy, dx, ch) in enumerate(FEATURES[c]):
        acc += coefs[k0 + k] * _shifted(r8, dy, dx, ch)
    shift = np.floor_divide(acc + COEF_DENOM // 2, COEF_DENOM)
    return np.clip(rows[..., c] + shift, 0, 256 * entropy.PIXEL_MEAN_GRID)


def log8(v: np.ndarray) -> np.ndarray:
    """Integer 8 * log2(v) for int64 v >= 1: 8 * floor(log2 v) plus the next 3 bits of v (a piecewise-linear log,
    exact at powers of two, within 1.7 of the true value). Integer arithmetic; frexp is exact for these values."""
    v = np.asarray(v, dtype=np.int64)
    n = np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1  # floor(log2 v)
    return 8 * n + ((v << 3) >> n) - 8


def neighbour_change(rows_c: np.ndarray) -> np.ndarray:
    """How much x^_0 changes around each pixel: sum of |differences| of a channel's base mean rows to its 4
    neighbours (edges replicated), (H, W) int64 in 1/8 grey levels. Known to the decoder before any pixel."""
    p = np.pad(rows_c, 1, mode="edge")
    centre = p[1:-1, 1:-1]
    return (np.abs(p[:-2, 1:-1] - centre) + np.abs(p[2:, 1:-1] - centre) + np.abs(p[1:-1, :-2] - centre)
            + np.abs(p[1:-1, 2:] - centre))


def scale_index(base: int, alpha: int, change: np.ndarray, left: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Per sub-pixel scale index: base + alpha/32 * (log8(8 + change) + log8(8 + |left| + |up|) - 48), where left and
    up are the neighbours' residuals (1/8 grey levels, 0 outside the image); the context is 0 in flat, exact areas."""
    ctx = log8(8 + change) + log8(8 + np.abs(left) + np.abs(up)) - 48
    return np.clip(base + (alpha * ctx) // ALPHA_DENOM, 0, entropy.SIGMA_TABLE_SIZE - 1)


def _scale_inputs(rows: np.ndarray, r8: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return neighbour_change(rows[..., c]), _shifted(r8, 0, -1, c), _shifted(r8, -1, 0, c)


def fit(pixels: np.ndarray, rows: np.ndarray) -> PixelParams:
    """Least-squares context coefficients, then the scale slope and per-channel base scales with the shortest code.
    pixels, rows: (H, W, 3)."""
    r8 = residual8(pixels, rows)
    coefs: list[int] = []
    for c, feats in enumerate(FEATURES):
        a = np.stack([_shifted(r8, dy, dx, ch).ravel() for dy, dx, ch in feats], 1).astype(np.float64)
        sol = np.linalg.lstsq(a, r8[..., c].ravel().astype(np.float64), rcond=None)[0] if a.any() else np.zeros(len(feats))
        coefs += [int(np.clip(round(v * COEF_DENOM), -128, 127)) for v in sol]
    conds = [conditional_rows(rows, r8, tuple(coefs), c).ravel() for c in range(3)]
    inputs = [tuple(x.ravel() for x in _scale_inputs(rows, r8, c)) for c in range(3)]

    def best_base(c: int, alpha: int) -> tuple[float, int]:
        pix, cond = pixels[..., c].ravel(), conds[c]
        extra = scale_index(0, alpha, *inputs[c])
        resid = (pix - (cond / entropy.PIXEL_MEAN_GRID - 0.5)) / 2.0 ** (extra / 8.0)
        guess = int(round(8 * math.log2(max(float(np.sqrt(np.mean(resid ** 2))), 0.25) / 0.25)))
        cands = range(max(0, guess - 4), min(entropy.SIGMA_TABLE_SIZE, guess + 5))
        return min((entropy.pixel_bits(pix, cond, np.clip(b + extra, 0, entropy.SIGMA_TABLE_SIZE - 1)), b)
                   for b in cands)

    def total(alpha: int) -> tuple[float, tuple[int, ...]]:
        fits = [best_base(c, alpha) for c in range(3)]
        return sum(f[0] for f in fits), tuple(f[1] for f in fits)

    tried = {a: total(a) for a in range(0, ALPHA_LEVELS, 4)}
    coarse = min(tried, key=lambda a: tried[a][0])
    for a in range(max(0, coarse - 3), min(ALPHA_LEVELS, coarse + 4)):
        tried.setdefault(a, total(a))
    alpha = min(tried, key=lambda a: tried[a][0])
    return PixelParams(tried[alpha][1], tuple(coefs), alpha)


def _all_scales(rows: np.ndarray, r8: np.ndarray, params: PixelParams) -> np.ndarray:
    return np.stack([scale_index(params.sigma[c], params.alpha, *_scale_inputs(rows, r8, c)) for c in range(3)], -1)


def code_length_bits(pixels: np.ndarray, rows: np.ndarray, params: PixelParams) -> float:
    """Ideal code length of the layer (pixels + 95 parameter bits)."""
    r8 = residual8(pixels, rows)
    cond = np.stack([conditional_rows(rows, r8, params.coefs, c) for c in range(3)], -1)
    bits = entropy.pixel_bits(pixels.ravel(), cond.ravel(), _all_scales(rows, r8, params).ravel())
    return bits + 3 * math.log2(entropy.SIGMA_TABLE_SIZE) + math.log2(ALPHA_LEVELS) + 8 * N_COEFS


def _diagonals(h: int, w: int):
    for d in range(h + w - 1):
        i = np.arange(max(0, d - w + 1), min(h, d + 1))
        yield i, d - i


def push(coder, pixels: np.ndarray, rows: np.ndarray, params: PixelParams) -> None:
    """Push the layer so that pop() returns it: parameters on top, then diagonals in order, channels R, G, B."""
    h, w, _ = pixels.shape
    r8 = residual8(pixels, rows)
    cond = np.stack([conditional_rows(rows, r8, params.coefs, c) for c in range(3)], -1)
    scale = _all_scales(rows, r8, params)
    for i, j in reversed(list(_diagonals(h, w))):
        for c in (2, 1, 0):
            coder.encode_reverse(pixels[i, j, c].astype(np.int32), entropy._MODELS.Categorical(perfect=False),
                                 entropy.pixel_probs(cond[i, j, c], scale[i, j, c]))
    sym = params.symbols()
    sig_model, alpha_model, coef_model = _param_models()
    coder.encode_reverse(sym[4:], coef_model)
    coder.encode_reverse(sym[3:4], alpha_model)
    coder.encode_reverse(sym[:3], sig_model)


def _known(r8: np.ndarray, y: np.ndarray, x: np.ndarray, ch: int) -> np.ndarray:
    """Decoded residuals at (y, x) of channel ch, 0 outside the image."""
    ok = (y >= 0) & (x >= 0)
    vals = np.zeros(len(y), dtype=np.int64)
    vals[ok] = r8[y[ok], x[ok], ch]
    return vals


def pop(coder, rows: np.ndarray) -> np.ndarray:
    """Inverse of push(): (H, W, 3) uint8 pixels, given the same base mean rows."""
    h, w, _ = rows.shape
    sig_model, alpha_model, coef_model = _param_models()
    sigma = coder.decode(sig_model, 3)
    alpha = coder.decode(alpha_model, 1)
    coefs = coder.decode(coef_model, N_COEFS)
    params = PixelParams.from_symbols(np.concatenate([sigma, alpha, coefs]))
    change = np.stack([neighbour_change(rows[..., c]) for c in range(3)], -1)
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    r8 = np.zeros((h, w, 3), dtype=np.int64)
    for i, j in _diagonals(h, w):
        for c in range(3):
            k0 = sum(len(f) for f in FEATURES[:c])
            acc = np.zeros(len(i), dtype=np.int64)
            for k, (dy, dx, ch) in enumerate(FEATURES[c]):
                acc += params.coefs[k0 + k] * _known(r8, i + dy, j + dx, ch)
            cond = np.clip(rows[i, j, c] + np.floor_divide(acc + COEF_DENOM // 2, COEF_DENOM), 0,
                           256 * entropy.PIXEL_MEAN_GRID)
            scale = scale_index(params.sigma[c], params.alpha, change[i, j, c], _known(r8, i, j - 1, c),
                                _known(r8, i - 1, j, c))
            vals = coder.decode(entropy._MODELS.Categorical(perfect=False),
                                entropy.pixel_probs(cond, scale)).astype(np.int64)
            pixels[i, j, c] = vals
            r8[i, j, c] = 8 * vals - rows[i, j, c] + 4
    return pixels
