"""Stage layout and integer inputs of the learned x_0 layer.

The image's sub-pixels are coded in STAGES groups: the four phases of a 2x2 grid (in PHASE_ORDER), each as R, G, B.
All sub-pixels of one stage are coded together, given the stages before it, so decoding takes STAGES network
evaluations whatever the image size. Space-to-depth puts stage k into channel k of a half-resolution tensor.

Inputs are integers at scale 2^-ACT_BITS (value = integer / 2^ACT_BITS), made from what both sides hold exactly:
x_{t_end} (float32, rounded), the base mean rows of x^_0 (entropy.pixelmodel.mean_rows, 1/8 grey level) and the
residuals already decoded (1/8 grey level, residual8 of pixelmodel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACT_BITS = 10  # activations: integer / 2^10
PHASE_ORDER = ((0, 0), (1, 1), (0, 1), (1, 0))  # (row parity, column parity) in coding order
STAGES = 3 * len(PHASE_ORDER)
X_T_CLAMP = 1 << 13  # |x_t| * 2^10 is clamped here (x_t beyond +-8 never occurs)
ROW_CENTRE = 1024  # mean rows (0..2048) are centred on this
RESIDUAL_SHIFT = 4  # residual input = residual8 << 4: grey levels / 64 at 2^-10

# pixel_unshuffle channel (c * 4 + di * 2 + dj) for stage k = phase * 3 + c
_UNSHUFFLE_INDEX = [c * 4 + di * 2 + dj for di, dj in PHASE_ORDER for c in range(3)]


def to_stages(planes: torch.Tensor) -> torch.Tensor:
    """(C, H, W) with C = 3 (colour) and even H, W -> (STAGES, H/2, W/2): channel k holds stage k's sub-pixels.
    Also accepts (B, 3, H, W) -> (B, STAGES, H/2, W/2)."""
    batched = planes.dim() == 4
    x = planes if batched else planes[None]
    out = F.pixel_unshuffle(x, 2)[:, _UNSHUFFLE_INDEX]
    return out if batched else out[0]


def from_stages(stages: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_stages` for (STAGES, h, w) or (B, STAGES, h, w)."""
    batched = stages.dim() == 4
    x = stages if batched else stages[None]
    inv = torch.empty_like(x)
    inv[:, _UNSHUFFLE_INDEX] = x
    out = F.pixel_shuffle(inv, 2)
    return out if batched else out[0]


def pad_even(planes: torch.Tensor) -> torch.Tensor:
    """Zero-pad the last two dims of (..., H, W) to even sizes."""
    h, w = planes.shape[-2:]
    return F.pad(planes, (0, w % 2, 0, h % 2))


def quantize_x_t(x_t: torch.Tensor) -> torch.Tensor:
    """x_{t_end} (any shape, float) -> int64 at 2^-10 (round half to even, clamped)."""
    return torch.round(x_t.double() * (1 << ACT_BITS)).clamp(-X_T_CLAMP, X_T_CLAMP).to(torch.int64)


def x_t_input(x_t_image: torch.Tensor) -> torch.Tensor:
    """x_{t_end} as an (H, W, 3) float tensor -> (3, H, W) int64 at 2^-10."""
    return quantize_x_t(x_t_image).permute(2, 0, 1).contiguous()


def rows_input(rows) -> torch.Tensor:
    """Base mean rows (H, W, 3) int64 numpy (0..2048) -> (3, H, W) int64 centred, at 2^-10 (x^_0 in [-1, 1])."""
    return (torch.as_tensor(rows, dtype=torch.int64) - ROW_CENTRE).permute(2, 0, 1).contiguous()


def residual_input(r8) -> torch.Tensor:
    """Residuals (H, W, 3) int64 in 1/8 grey level -> (3, H, W) int64 at 2^-10."""
    return (torch.as_tensor(r8, dtype=torch.int64) << RESIDUAL_SHIFT).permute(2, 0, 1).contiguous()
