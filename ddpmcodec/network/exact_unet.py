"""The U-Net evaluated on integer grids: the same outputs on every machine (the codec's `--portable` files).

Lossless files need the encoder's network outputs to the last bit, and float kernels differ between instruction sets
and torch builds (eval.portability_probe: AVX2 vs AVX-512 kernels of one torch build drift by up to 5e-6 at the end
of a chain, enough to break the exact x_0 layer). Here every activation is an integer at scale 2^-act_bits held in
float64, every weight an integer at 2^-weight_bits. Convolutions and matmuls then sum integers whose partial sums
stay below 2^53, so float64 gives them exactly in any order, with or without FMA. Reductions (GroupNorm statistics)
are int64 sums. What remains inexact is elementwise: IEEE basic operations (+ - * / sqrt) are correctly rounded and
so identical everywhere, and exp / sin / cos may differ by an ulp between implementations; each result is rounded
back to the activation grid, where an ulp changes the rounding only within ~1e-16 of a grid boundary.

Shapes as UNet: x (B, C, H, W) float in [-1, 1], t (B,) int64 0-based; output eps (B, out_ch, H, W) float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpmcodec.errors import InputError
from ddpmcodec.network.unet import AttnBlock, ResnetBlock, UNet, timestep_embedding

EXACT_LIMIT = 2.0 ** 53


class GridUNet:
    """A UNet's weights on integer grids and its forward pass in exact arithmetic (see the module doc)."""

    def __init__(self, net: UNet, act_bits: int = 16, weight_bits: int = 20, attn_bits: int = 20):
        self.net = net
        self.cfg = net.config
        self.a = float(2 ** act_bits)
        self.w = float(2 ** weight_bits)
        self.attn = float(2 ** attn_bits)
        self._weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = torch.round(module.weight.detach().double() * self.w)
                b = torch.round(module.bias.detach().double() * self.w * self.a)
                self._weights[id(module)] = (w, b)
        self.max_partial = 0.0  # the largest |accumulator| seen (must stay below 2^53 for exactness)

    # ---- grid helpers ----------------------------------------------------------------------------------------
    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """Real values -> integers at the activation scale (float64)."""
        return torch.round(x * self.a)

    def _check(self, acc: torch.Tensor, fan_in: int) -> None:
        bound = float(acc.abs().max()) if acc.numel() else 0.0
        self.max_partial = max(self.max_partial, bound)
        if bound >= EXACT_LIMIT / 4:  # headroom: partial sums can exceed the final sum
            raise InputError(f"--portable: this model's activations leave the integer grids' exact range (a sum of "
                             f"{bound:.3g} over {fan_in} terms, limit 2^51); use the float network (no --portable)")

    def _conv(self, module, x: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
        w, b = self._weights[id(module)]
        acc = F.conv2d(x, w, None, stride=stride, padding=padding) + b[None, :, None, None]
        self._check(acc, w[0].numel())
        return torch.round(acc / self.w)

    def _linear(self, module, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weights[id(module)]
        acc = x @ w.T + b
        self._check(acc, w.shape[1])
        return torch.round(acc / self.w)

    def _swish(self, x: torch.Tensor) -> torch.Tensor:
        real = x / self.a
        return self._grid(real * torch.sigmoid(real))

    def _norm(self, module: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = module.num_groups
        xi = x.to(torch.int64).reshape(b, g, -1)
        n = xi.shape[2]
        if xi.numel() and int(xi.abs().max()) >= 1 << 24:  # keeps the int64 sum of squares exact
            raise InputError("--portable: this model's activations leave the integer grids' exact range (|a| >= "
                             "256 before a GroupNorm); use the float network (no --portable)")
        s1 = xi.sum(2).double()  # exact int64 sums, then one rounding each
        s2 = (xi * xi).sum(2).double()
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=0.0) / (self.a * self.a)
        rstd = 1.0 / torch.sqrt(var + module.eps)
        y = (x.reshape(b, g, -1) - mean[:, :, None]) / self.a * rstd[:, :, None]
        y = y.reshape(b, c, -1) * module.weight.detach().double()[None, :, None] \
            + module.bias.detach().double()[None, :, None]
        return self._grid(y.reshape(x.shape))

    # ---- blocks ----------------------------------------------------------------------------------------------
    def _resblock(self, blk: ResnetBlock, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self._conv(blk.conv1, self._swish(self._norm(blk.norm1, x)), padding=1)
        h = h + self._linear(blk.temb_proj, self._swish(temb))[:, :, None, None]
        h = self._conv(blk.conv2, self._swish(self._norm(blk.norm2, h)), padding=1)
        if blk.in_channels != blk.out_channels:
            x = self._conv(blk.nin_shortcut, x)
        return x + h

    def _attn(self, blk: AttnBlock, x: torch.Tensor) -> torch.Tensor:
        h = self._norm(blk.norm, x)
        b, c, hh, ww = x.shape
        q = self._conv(blk.q, h).reshape(b, c, hh * ww).permute(0, 2, 1)
        k = self._conv(blk.k, h).reshape(b, c, hh * ww)
        v = self._conv(blk.v, h).reshape(b, c, hh * ww)
        logits = torch.bmm(q, k)  # exact: integers at a^2
        self._check(logits, c)
        weights = torch.softmax(logits / (self.a * self.a) * (int(c) ** -0.5), dim=2)
        wq = torch.round(weights * self.attn)
        out = torch.bmm(v, wq.permute(0, 2, 1))  # exact: integers at a * attn
        self._check(out, hh * ww)
        out = torch.round(out / self.attn).reshape(b, c, hh, ww)
        return x + self._conv(blk.proj_out, out)

    # ---- forward ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":  # cuDNN may pick FFT or Winograd convolutions, which round; im2col GEMMs do not
            with torch.backends.cudnn.flags(enabled=False):
                return self._forward(x, t)
        return self._forward(x, t)

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        net, cfg = self.net, self.cfg
        emb = self._grid(timestep_embedding(t, cfg.ch).double())
        temb = self._linear(net.temb.dense[0], emb)
        temb = self._linear(net.temb.dense[1], self._swish(temb))
        hs = [self._conv(net.conv_in, self._grid(x.double()), padding=1)]
        n_levels = len(cfg.ch_mult)
        for i in range(n_levels):
            level = net.down[i]
            for j in range(cfg.num_res_blocks):
                h = self._resblock(level.block[j], hs[-1], temb)
                if len(level.attn) > 0:
                    h = self._attn(level.attn[j], h)
                hs.append(h)
            if i != n_levels - 1:
                hs.append(self._conv(level.downsample.conv, F.pad(hs[-1], (0, 1, 0, 1)), stride=2))
        h = self._resblock(net.mid.block_1, hs[-1], temb)
        h = self._resblock(net.mid.block_2, self._attn(net.mid.attn_1, h), temb)
        for i in reversed(range(n_levels)):
            level = net.up[i]
            for j in range(cfg.num_res_blocks + 1):
                h = self._resblock(level.block[j], torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = self._attn(level.attn[j], h)
            if i != 0:
                h = self._conv(level.upsample.conv, F.interpolate(h, scale_factor=2.0, mode="nearest"), padding=1)
        out = self._conv(net.conv_out, self._swish(self._norm(net.norm_out, h)), padding=1)
        return (out / self.a).float()


class ExactNetwork:
    """A DiffusionModel whose eps_reproducible runs on integer grids (DiffusionModel.eps_exact); every other
    attribute is the model's. What format-8 (--portable) files are coded with."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def eps_reproducible(self, x: torch.Tensor, t: int, workers: int | None = None) -> torch.Tensor:
        return self._model.eps_exact(x, t, workers)
