"""The learned x_0 layer's network: config and the float module used for training.

Per stage (layout.py) it predicts each sub-pixel's residual mean (relative to x^_0's mean rows) and log-scale from
x_{t_end}, x^_0 and the residuals of earlier stages. Everything runs at half resolution on space-to-depth tensors:
the conditioning (x_t, x^_0; 24 channels) through an unmasked trunk, the residuals (12 channels, one per stage)
through convolutions masked by stage, so that one forward pass gives every stage's prediction with the right
causality (the encoder) and stage k needs only the residuals of stages < k (the decoder: STAGES passes).
Hidden channels come in STAGES groups of `per_stage`; group g sees residual stages < g (first layer) and hidden
groups <= g (later layers), and stage g's outputs read hidden groups <= g.

Units (float view of the integers, see layout.py): inputs x_t, x^_0 - 1 (about [-1, 1]), residual / 64 grey levels;
outputs: mean offset in grey levels / 8 (so 1/8 grey level = 1/64), log2(sigma / 0.25 grey levels).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ddpmcodec.entropy.x0net.layout import STAGES

MEAN_UNIT = 64  # 1/8-grey-level mean rows per output unit


@dataclass(frozen=True)
class X0NetConfig:
    """Shape of the network; travels with its weights."""

    t_end: int  # the coded step it was trained for: x_0 is coded from x_{t_end}
    per_stage: int = 12  # hidden channels per stage group (hidden width = STAGES * per_stage)
    cond_width: int = 64  # channels of the unmasked conditioning trunk
    cond_layers: int = 2  # residual 3x3 blocks in the trunk after its input convolution
    layers: int = 4  # masked residual 3x3 blocks after the masked input convolution

    @property
    def hidden(self) -> int:
        return STAGES * self.per_stage

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "X0NetConfig":
        fields = json.loads(text)
        if not isinstance(fields, dict) or set(fields) != set(cls.__dataclass_fields__):
            raise ValueError("x_0 layer config has unexpected fields")
        if not all(isinstance(v, int) and 1 <= v <= 4096 for v in fields.values()):
            raise ValueError("x_0 layer config values out of range")
        return cls(**fields)


def stage_masks(cfg: X0NetConfig) -> dict[str, torch.Tensor]:
    """Binary (out, in) masks of the masked convolutions: 'input' (hidden x STAGES residual channels, strictly
    earlier stages), 'hidden' (hidden x hidden, same or earlier groups), 'head' (2*STAGES x hidden)."""
    group = torch.arange(cfg.hidden) // cfg.per_stage
    stage = torch.arange(STAGES)
    head_stage = torch.cat([stage, stage])  # mean outputs, then log-scale outputs
    return {"input": (group[:, None] > stage[None, :]).float(),
            "hidden": (group[:, None] >= group[None, :]).float(),
            "head": (head_stage[:, None] >= group[None, :]).float()}


def conv_names(cfg: X0NetConfig) -> list[str]:
    """Every convolution in evaluation order (names of the stored weight/bias pairs)."""
    names = ["cond_in"] + [f"cond{i}" for i in range(cfg.cond_layers)] + ["res_in", "proj0"]
    for i in range(cfg.layers):
        names += [f"hidden{i}", f"proj{i + 1}"]
    return names + ["head"]


class X0Net(nn.Module):
    """Float training module. forward(cond (B, 24, h, w), residuals (B, STAGES, h, w)) -> (mean, log_scale),
    each (B, STAGES, h, w), in the units of the module docstring."""

    def __init__(self, cfg: X0NetConfig):
        super().__init__()
        self.cfg = cfg
        cw, hid = cfg.cond_width, cfg.hidden
        convs = {"cond_in": nn.Conv2d(24, cw, 3, padding=1), "res_in": nn.Conv2d(STAGES, hid, 3, padding=1),
                 "head": nn.Conv2d(hid, 2 * STAGES, 1)}
        for i in range(cfg.cond_layers):
            convs[f"cond{i}"] = nn.Conv2d(cw, cw, 3, padding=1)
        for i in range(cfg.layers + 1):
            convs[f"proj{i}"] = nn.Conv2d(cw, hid, 1)
        for i in range(cfg.layers):
            convs[f"hidden{i}"] = nn.Conv2d(hid, hid, 3, padding=1)
        self.convs = nn.ModuleDict(convs)
        for name, m in stage_masks(cfg).items():
            self.register_buffer(f"mask_{name}", m[:, :, None, None])
        with torch.no_grad():
            self.convs["head"].weight.mul_(0.1)
            self.convs["head"].bias.zero_()
            self.convs["head"].bias[STAGES:] = 3.5  # sigma about 3 grey levels at the start

    def masked_weight(self, name: str) -> torch.Tensor:
        w = self.convs[name].weight
        if name == "res_in":
            return w * self.mask_input
        if name.startswith("hidden"):
            return w * self.mask_hidden
        if name == "head":
            return w * self.mask_head
        return w

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        conv = self.convs[name]
        return nn.functional.conv2d(x, self.masked_weight(name), conv.bias, padding=conv.padding)

    def forward(self, cond: torch.Tensor, residuals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.relu(self._conv("cond_in", cond))
        for i in range(self.cfg.cond_layers):
            c = c + torch.relu(self._conv(f"cond{i}", c))
        h = torch.relu(self._conv("res_in", residuals) + self._conv("proj0", c))
        for i in range(self.cfg.layers):
            h = h + torch.relu(self._conv(f"hidden{i}", h) + self._conv(f"proj{i + 1}", c))
        out = self._conv("head", h)
        return out[:, :STAGES], out[:, STAGES:]
