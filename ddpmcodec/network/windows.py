"""Windowed network evaluation: eps for a tiled image, computed on overlapping windows and blended.

The codec cuts an image into tiles of the model's resolution R (``images.to_tiles``); evaluating the U-Net on each
tile alone makes every tile's prediction blind to its neighbours, which shows as R-pixel seams in lossy previews.
Here the tiles are put back together into the padded image (gh*R x gw*R), the network runs on windows of
``size`` x ``size`` pixels placed every ``stride`` pixels (the last window in each direction is shifted to end at the
image border, so every window lies inside the padded image), and each window's prediction is weighted by a smooth
separable raised-cosine window, positive at every pixel of the window, normalised so that the weights of all windows
covering a pixel sum to 1. The result is cut back into tiles.

Reproducibility: windows are listed in a fixed (row-major) order and evaluated through
``model.eps_reproducible`` (fixed groups on one-thread workers); blending is element-wise float32 arithmetic in
that same fixed order, so the output does not depend on the thread count. A pixel covered by one window only
(e.g. an image of one tile) gets that window's prediction exactly (weight w / w = 1).

The geometry (``WINDOW``, ``STRIDE`` relative to R) is part of the file format: files with the header's windowed
flag are decoded with exactly this geometry.
"""
from __future__ import annotations

import math

import torch

# Format constants (as fractions of the model resolution R): windows of R pixels every 3R/4 pixels. Measured
# (docs/seams/README.md): stride R/2 predicts eps ~0.5% better but costs ~4x the per-tile network time on large
# images (3R/4: ~1.8x); windows of 2R or the whole image predict worse than R (the model only saw R x R inputs:
# GroupNorm statistics and attention span change).
WINDOW_TILES = 1.0  # window side, in tiles
STRIDE_TILES = 0.75  # window step, in tiles


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of `size` every `stride` pixels covering [0, length); the last one is shifted to
    end at `length` (a window never reaches outside). One window when size >= length."""
    if size >= length:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def blend_weight(size: int) -> torch.Tensor:
    """Raised cosine sin^2(pi (i + 1/2) / size), i = 0..size-1: float32, positive everywhere, peak in the middle.
    With stride size/2 two neighbours sum to exactly 1 (up to rounding) before normalisation."""
    i = torch.arange(size, dtype=torch.float64)
    return torch.sin(math.pi * (i + 0.5) / size).pow(2).float()


def geometry(tile: int) -> tuple[int, int]:
    """(window size, stride) in pixels for a model of resolution `tile`."""
    return int(round(WINDOW_TILES * tile)), max(1, int(round(STRIDE_TILES * tile)))


def tiles_to_canvas(tiles: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(gh*gw, C, R, R) row-major tiles -> (C, gh*R, gw*R)."""
    gh, gw = grid
    n, c, r, _ = tiles.shape
    if n != gh * gw:
        raise ValueError(f"{n} tiles do not fill a {gh}x{gw} grid")
    return tiles.reshape(gh, gw, c, r, r).permute(2, 0, 3, 1, 4).reshape(c, gh * r, gw * r)


def canvas_to_tiles(canvas: torch.Tensor, tile: int) -> torch.Tensor:
    """(C, gh*R, gw*R) -> (gh*gw, C, R, R) row-major tiles (inverse of :func:`tiles_to_canvas`)."""
    c, hh, ww = canvas.shape
    gh, gw = hh // tile, ww // tile
    return canvas.reshape(c, gh, tile, gw, tile).permute(1, 3, 0, 2, 4).reshape(gh * gw, c, tile, tile).contiguous()


def windows(height: int, width: int, size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y, x, window height, window width) of every window, row-major."""
    wh, ww = min(size, height), min(size, width)
    return [(y, x, wh, ww) for y in window_starts(height, wh, stride) for x in window_starts(width, ww, stride)]


def normalised_weights(height: int, width: int, wins: list[tuple[int, int, int, int]]) -> list[torch.Tensor]:
    """Per window, its (wh, ww) float32 blend weights divided by the sum over all windows at each pixel."""
    total = torch.zeros(height, width, dtype=torch.float32)
    raw = []
    for y, x, wh, ww in wins:
        w = blend_weight(wh)[:, None] * blend_weight(ww)[None, :]
        raw.append(w)
        total[y:y + wh, x:x + ww] += w
    return [w / total[y:y + wh, x:x + ww] for w, (y, x, wh, ww) in zip(raw, wins)]


def eps_windowed(model, tiles: torch.Tensor, t: int, grid: tuple[int, int], size: int | None = None,
                 stride: int | None = None, workers: int | None = None) -> torch.Tensor:
    """eps for the tiled image `tiles` (gh*gw, 3, R, R) at step t, from blended overlapping windows.

    size/stride default to the format geometry (:func:`geometry`). Windows of equal shape are evaluated as one
    batch through ``model.eps_reproducible``; returns float32 tiles in the input's layout.
    """
    r = tiles.shape[-1]
    d_size, d_stride = geometry(r)
    size, stride = size or d_size, stride or d_stride
    canvas = tiles_to_canvas(tiles.float(), grid)
    _, height, width = canvas.shape
    wins = windows(height, width, size, stride)
    weights = normalised_weights(height, width, wins)
    out = torch.zeros_like(canvas)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k, (_, _, wh, ww) in enumerate(wins):
        by_shape.setdefault((wh, ww), []).append(k)
    preds: list[torch.Tensor | None] = [None] * len(wins)
    for (wh, ww), ks in by_shape.items():
        batch = torch.stack([canvas[:, wins[k][0]:wins[k][0] + wh, wins[k][1]:wins[k][1] + ww] for k in ks])
        eps = model.eps_reproducible(batch.contiguous(), t, workers).float()
        for j, k in enumerate(ks):
            preds[k] = eps[j]
    for (y, x, wh, ww), w, e in zip(wins, weights, preds):
        out[:, y:y + wh, x:x + ww] += e * w
    return canvas_to_tiles(out, r)


def cost_factor(grid: tuple[int, int], tile: int, size: int | None = None, stride: int | None = None) -> float:
    """Network pixels evaluated per image pixel (1.0 for plain tiles)."""
    d_size, d_stride = geometry(tile)
    size, stride = size or d_size, stride or d_stride
    h, w = grid[0] * tile, grid[1] * tile
    return sum(wh * ww for _, _, wh, ww in windows(h, w, size, stride)) / (h * w)
