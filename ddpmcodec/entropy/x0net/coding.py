"""The learned x_0 layer on the rANS stack: stage by stage, each stage one vector of sub-pixels under discretized
Gaussians (entropy.rans.pixel_probs) whose integer means and scale indices come from the integer network.

Inputs, both sides: the image's base mean rows of x^_0 (pixelmodel.mean_rows, (H, W, 3) int64) and x_{t_end}
as an (H, W, 3) float tensor (images.from_tiles of the chain's tiles). Odd sizes are padded to even with zeros;
padding is never coded. No parameters are sent: the weights are part of the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpmcodec.entropy import rans as entropy
from ddpmcodec.entropy.pixelmodel import residual8
from ddpmcodec.entropy.x0net import layout
from ddpmcodec.entropy.x0net.integer import IntegerX0Net, coder_params

SYMBOLS_PER_CALL = 1 << 14  # sub-pixels per coder call: bounds the (n, 256) probability tables (32 MiB)


class _Planes:
    """Stage-layout integer planes of one image: cond (1, 24, h, w), rows (STAGES, h, w), real-pixel mask."""

    def __init__(self, rows: np.ndarray, x_t_image: torch.Tensor):
        height, width, _ = rows.shape
        if tuple(x_t_image.shape) != (height, width, 3):
            raise ValueError("x_t and mean rows differ in shape")
        self.shape = (height, width)
        self.cond = torch.cat([_stages(layout.x_t_input(x_t_image)), _stages(layout.rows_input(rows))], 0)[None]
        self.rows = _stages(torch.as_tensor(rows, dtype=torch.int64).permute(2, 0, 1))
        self.real = _stages(torch.ones((3, height, width), dtype=torch.int64)).bool()


def _stages(planes: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (STAGES, h, w), zero-padded to even sizes."""
    return layout.to_stages(layout.pad_even(planes))


@dataclass
class StageCode:
    """The encoder's view of one image under the layer: every stage's values and coder parameters, from one
    network pass; (STAGES, h, w) int64 tensors and the real-pixel mask."""

    real: torch.Tensor
    values: torch.Tensor
    mean_rows: torch.Tensor
    sigma_index: torch.Tensor

    def bits(self) -> float:
        """Ideal code length of the layer in bits (no parameters are sent)."""
        real = self.real
        return entropy.pixel_bits(self.values[real].numpy(), self.mean_rows[real].numpy(),
                                  self.sigma_index[real].numpy())

    def push(self, coder) -> None:
        """Push the layer so that pop() returns it: stage 0 ends on top."""
        for k in reversed(range(layout.STAGES)):
            real = self.real[k]
            vals, means = self.values[k][real].numpy(), self.mean_rows[k][real].numpy()
            scales = self.sigma_index[k][real].numpy()
            for a in reversed(range(0, len(vals), SYMBOLS_PER_CALL)):
                b = a + SYMBOLS_PER_CALL
                coder.encode_reverse(vals[a:b].astype(np.int32), entropy._MODELS.Categorical(perfect=False),
                                     entropy.pixel_probs(means[a:b], scales[a:b]))


def prepare(net: IntegerX0Net, pixels: np.ndarray, rows: np.ndarray, x_t_image: torch.Tensor) -> StageCode:
    """Encoder side: every stage's coder parameters in one pass (pixels (H, W, 3) uint8)."""
    planes = _Planes(rows, x_t_image)
    residuals = _stages(layout.residual_input(residual8(pixels, rows)))[None]
    mean_out, scale_out = net.heads(net.trunk(planes.cond), residuals)
    mean_rows, sigma_index = coder_params(mean_out[0], scale_out[0], planes.rows)
    values = _stages(torch.from_numpy(pixels.astype(np.int64)).permute(2, 0, 1))
    return StageCode(planes.real, values, mean_rows, sigma_index)


def code_length_bits(net: IntegerX0Net, pixels: np.ndarray, rows: np.ndarray, x_t_image: torch.Tensor) -> float:
    """Ideal code length of the layer in bits (no parameters are sent)."""
    return prepare(net, pixels, rows, x_t_image).bits()


def push(coder, net: IntegerX0Net, pixels: np.ndarray, rows: np.ndarray, x_t_image: torch.Tensor) -> None:
    """Push the layer so that pop() returns it: stage 0 ends on top."""
    prepare(net, pixels, rows, x_t_image).push(coder)


def pop(coder, net: IntegerX0Net, rows: np.ndarray, x_t_image: torch.Tensor) -> np.ndarray:
    """Inverse of push(): (H, W, 3) uint8 pixels, given the same mean rows and x_t."""
    planes = _Planes(rows, x_t_image)
    trunk = net.trunk(planes.cond)
    residuals = torch.zeros((1, layout.STAGES) + tuple(planes.rows.shape[1:]), dtype=torch.int64)
    values = torch.zeros_like(planes.rows)
    state: dict = {}
    for k in range(layout.STAGES):
        mean_out, scale_out = net.stage_outputs(trunk, residuals, state, k)
        mean_rows, sigma_index = coder_params(mean_out[0], scale_out[0], planes.rows[k])
        real = planes.real[k]
        means, scales = mean_rows[real].numpy(), sigma_index[real].numpy()
        got = [coder.decode(entropy._MODELS.Categorical(perfect=False),
                            entropy.pixel_probs(means[a:a + SYMBOLS_PER_CALL], scales[a:a + SYMBOLS_PER_CALL]))
               for a in range(0, len(means), SYMBOLS_PER_CALL)]
        if got:  # tiny images leave some stages empty
            values[k][real] = torch.from_numpy(np.concatenate(got).astype(np.int64))
        r8 = torch.where(real, 8 * values[k] - planes.rows[k] + 4, torch.zeros_like(values[k]))
        residuals[0, k] = r8 << layout.RESIDUAL_SHIFT
    height, width = planes.shape
    return layout.from_stages(values)[:, :height, :width].permute(1, 2, 0).numpy().astype(np.uint8)
