"""The DDPM eps-prediction U-Net (Ho et al. 2020), parameter-compatible with pesser/pytorch_diffusion.

Parameter names follow the PyTorch port of the official CIFAR-10 model, so its converted checkpoints load with
``strict=True``: ``temb.dense.{0,1}``, ``conv_in``, ``down.{i}.block.{j}``, ``down.{i}.attn.{j}``,
``down.{i}.downsample.conv``, ``mid.{block_1,attn_1,block_2}``, ``up.{i}.block.{j}``, ``up.{i}.attn.{j}``,
``up.{i}.upsample.conv``, ``norm_out``, ``conv_out``.

Shapes: images (B, C, H, W) float in model space [-1, 1]; timesteps (B,) int64 **0-based** (0..T-1); the output is
the predicted noise eps with shape (B, out_ch, H, W).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters (defaults: the paper's 35.7M-parameter CIFAR-10 model)."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    in_channels: int = 3
    resolution: int = 32
    resamp_with_conv: bool = True

    def __post_init__(self):
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.ch <= 0 or self.ch % 32:
            raise ValueError(f"ch must be a positive multiple of 32 (GroupNorm(32)), got {self.ch}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be non-empty positive ints, got {self.ch_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.resolution <= 0 or self.resolution % self.downsample_factor:
            raise ValueError(
                f"resolution {self.resolution} must be divisible by 2^(len(ch_mult)-1) = {self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        """Total spatial reduction between the first and last level; H and W must be multiples of it."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def attn_levels(self) -> tuple[int, ...]:
        """Indices of the levels that carry self-attention (level i runs at resolution / 2^i)."""
        return tuple(i for i in range(len(self.ch_mult)) if self.resolution // 2**i in self.attn_resolutions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown UNetConfig keys: {sorted(unknown)}")
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) float32: [sin, cos] halves, freq_k = exp(-ln(1e4) k / (half - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then (optionally) a 3x3 conv. (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Pad (0,1,0,1) then a stride-2 3x3 conv (or 2x2 average pooling). (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """GN-swish-conv, + temb projection, GN-swish-dropout-conv, with a 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, softmax(q.k / sqrt(C)), with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)  # (B, N, C)
        k = self.k(h).reshape(b, c, hh * ww)  # (B, C, N)
        v = self.v(h).reshape(b, c, hh * ww)  # (B, C, N)
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (B, Nq, Nk)
        out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


def _level() -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList()
    level.attn = nn.ModuleList()
    return level


class UNet(nn.Module):
    """DDPM U-Net. ``forward(x (B,C,H,W), t (B,) int64 0-based) -> eps (B,out_ch,H,W)``.

    Attention placement is fixed at construction from ``config.resolution``; at run time any H, W divisible by
    ``config.downsample_factor`` is accepted (the network is fully convolutional apart from the attention).
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        ch, mult, nrb = config.ch, config.ch_mult, config.num_res_blocks
        self.temb_ch = 4 * ch
        n_levels = len(mult)
        in_mult = (1,) + tuple(mult)
        attn_levels = set(config.attn_levels)

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, stride=1, padding=1)

        self.down = nn.ModuleList()
        block_in = ch
        for i in range(n_levels):
            level = _level()
            block_in, block_out = ch * in_mult[i], ch * mult[i]
            for _ in range(nrb):
                level.block.append(ResnetBlock(block_in, block_out, self.temb_ch, config.dropout))
                block_in = block_out
                if i in attn_levels:
                    level.attn.append(AttnBlock(block_in))
            if i != n_levels - 1:
                level.downsample = Downsample(block_in, config.resamp_with_conv)
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, self.temb_ch, config.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, self.temb_ch, config.dropout)

        up_levels = []
        for i in reversed(range(n_levels)):
            level = _level()
            block_out = ch * mult[i]
            for j in range(nrb + 1):
                skip_in = ch * (in_mult[i] if j == nrb else mult[i])
                level.block.append(ResnetBlock(block_in + skip_in, block_out, self.temb_ch, config.dropout))
                block_in = block_out
                if i in attn_levels:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in, config.resamp_with_conv)
            up_levels.insert(0, level)
        self.up = nn.ModuleList(up_levels)

        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        f = cfg.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"H and W must be multiples of {f}, got {tuple(x.shape[2:])}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"expected t of shape ({x.shape[0]},), got {tuple(t.shape)}")

        temb = self.temb.dense[0](timestep_embedding(t, cfg.ch))
        temb = self.temb.dense[1](_swish(temb))

        n_levels = len(cfg.ch_mult)
        hs = [self.conv_in(x)]
        for i in range(n_levels):
            level = self.down[i]
            for j in range(cfg.num_res_blocks):
                h = level.block[j](hs[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
                hs.append(h)
            if i != n_levels - 1:
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for i in reversed(range(n_levels)):
            level = self.up[i]
            for j in range(cfg.num_res_blocks + 1):
                h = level.block[j](torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)

        return self.conv_out(_swish(self.norm_out(h)))


def count_parameters(net: nn.Module) -> int:
    """Total number of parameter elements."""
    return sum(p.numel() for p in net.parameters())
