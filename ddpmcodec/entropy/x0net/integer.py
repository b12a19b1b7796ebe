"""Integer-exact inference of the learned x_0 layer: the same numbers on every machine, device and thread count.

Activations are integers at scale 2^-ACT_BITS, weights integers at 2^-WEIGHT_BITS, biases at 2^-(ACT_BITS +
WEIGHT_BITS). A convolution is an im2col product computed in float64 on integer values: every product and partial
sum stays below 2^53 (activations |a| <= 2^20, weights |w| <= 2^19, at most 2^12 terms), so the result is exact in
any summation order and converts to int64 without rounding. Requantization is an integer shift with rounding; ReLU
and the residual sums are integer operations. Encoder and decoder therefore compute identical probabilities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpmcodec.entropy import rans as entropy
from ddpmcodec.entropy.x0net import layout
from ddpmcodec.entropy.x0net.model import X0Net, X0NetConfig, conv_names

WEIGHT_BITS = 12
ACT_LIMIT = 1 << 20
WEIGHT_LIMIT = 1 << 19
BIAS_LIMIT = 1 << 44
MAX_FAN_IN = 1 << 12
_SHIFT = WEIGHT_BITS
_HALF = 1 << (_SHIFT - 1)


def _requantize(acc: torch.Tensor) -> torch.Tensor:
    """Accumulator at 2^-(ACT+WEIGHT) -> activation at 2^-ACT, rounded half up, clamped."""
    return ((acc + _HALF) >> _SHIFT).clamp(-ACT_LIMIT, ACT_LIMIT)


class IntegerX0Net:
    """The codec's form of the network: int64 weights (O, I, k, k) and biases (O,) per convolution."""

    def __init__(self, cfg: X0NetConfig, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        expected = conv_names(cfg)
        if sorted(weights) != sorted(expected):
            raise ValueError("x_0 layer weights do not match its config")
        shapes = X0Net(cfg).convs
        for name in expected:
            w, b = weights[name]
            want = tuple(shapes[name].weight.shape)
            if tuple(w.shape) != want or tuple(b.shape) != want[:1] or w.dtype != torch.int64 or b.dtype != torch.int64:
                raise ValueError(f"x_0 layer weight {name}: shape or type does not match its config")
            if int(w.abs().max()) > WEIGHT_LIMIT or int(b.abs().max()) > BIAS_LIMIT or w[0].numel() > MAX_FAN_IN:
                raise ValueError(f"x_0 layer weight {name} out of the exact range")
        self.cfg = cfg
        self.weights = weights
        self._mats = {n: w.reshape(w.shape[0], -1).double() for n, (w, _) in weights.items()}

    @classmethod
    def from_float(cls, net: X0Net) -> "IntegerX0Net":
        """Round a trained float module's (masked) weights to the integer grid, clamped to the exact range."""
        weights = {}
        with torch.no_grad():
            for name in conv_names(net.cfg):
                w = torch.round(net.masked_weight(name).double() * (1 << WEIGHT_BITS))
                b = torch.round(net.convs[name].bias.double() * (1 << (WEIGHT_BITS + layout.ACT_BITS)))
                weights[name] = (w.clamp(-WEIGHT_LIMIT, WEIGHT_LIMIT).to(torch.int64),
                                 b.clamp(-BIAS_LIMIT, BIAS_LIMIT).to(torch.int64))
        return cls(net.cfg, weights)

    def _conv(self, name: str, x: torch.Tensor, rows: slice = slice(None), cols: int | None = None) -> torch.Tensor:
        """Exact accumulator (B, O', h, w) int64 at 2^-(ACT+WEIGHT) for int64 activations x (B, I', h, w): output
        channels `rows` of the weights, reading their first `cols` input channels (I' = cols; default all)."""
        w, b = self.weights[name]
        k = w.shape[-1]
        cols = w.shape[1] if cols is None else cols
        mat = self._mats[name].view(w.shape[0], w.shape[1], k * k)[rows, :cols].reshape(-1, cols * k * k)
        return exact_conv(x[:, :cols], mat, k) + b[rows].view(1, -1, 1, 1)

    def trunk(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning features (B, cond_width, h, w) from cond (B, 24, h, w) int64 (x_t and x^_0 rows)."""
        c = torch.relu(_requantize(self._conv("cond_in", cond)))
        for i in range(self.cfg.cond_layers):
            c = (c + torch.relu(_requantize(self._conv(f"cond{i}", c)))).clamp(-ACT_LIMIT, ACT_LIMIT)
        return c

    def heads(self, c: torch.Tensor, residuals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per stage mean and log-scale outputs (B, STAGES, h, w) int64 at 2^-10, given trunk features and the
        residual inputs (B, STAGES, h, w) int64 (stage k's outputs read only residual stages < k)."""
        h = torch.relu(_requantize(self._conv("res_in", residuals) + self._conv("proj0", c)))
        for i in range(self.cfg.layers):
            h = h + torch.relu(_requantize(self._conv(f"hidden{i}", h) + self._conv(f"proj{i + 1}", c)))
            h = h.clamp(-ACT_LIMIT, ACT_LIMIT)
        out = self._conv("head", h) >> _SHIFT
        return out[:, :layout.STAGES], out[:, layout.STAGES:]

    def stage_outputs(self, c: torch.Tensor, residuals: torch.Tensor, state: dict, k: int):
        """Stage k's (mean, log-scale) outputs (B, h, w), equal to heads()[.][:, k], computing only hidden group k.

        Hidden group g depends on residual stages < g only, so the groups of earlier stages (kept in `state`,
        an empty dict before stage 0) are final; each stage adds its own group: the decoder's STAGES calls cost
        about one full pass. residuals: (B, STAGES, h, w) with stages < k filled in."""
        n = self.cfg.per_stage
        grp, upto = slice(k * n, (k + 1) * n), (k + 1) * n
        if not state:
            state["proj"] = [self._conv(f"proj{i}", c) for i in range(self.cfg.layers + 1)]
            state["hidden"] = [[] for _ in range(self.cfg.layers + 1)]
        proj, hidden = state["proj"], state["hidden"]
        if k:  # group k reads residual stages < k
            acc = proj[0][:, grp] + self._conv("res_in", residuals, grp, k)
        else:  # stage 0 has no residual context: only the bias
            acc = proj[0][:, grp] + self.weights["res_in"][1][grp].view(1, -1, 1, 1)
        hidden[0].append(torch.relu(_requantize(acc)))
        for i in range(self.cfg.layers):
            prev = torch.cat(hidden[i], 1)
            acc = self._conv(f"hidden{i}", prev, grp, upto) + proj[i + 1][:, grp]
            new = hidden[i][k] + torch.relu(_requantize(acc))
            hidden[i + 1].append(new.clamp(-ACT_LIMIT, ACT_LIMIT))
        out = self._conv("head", torch.cat(hidden[-1], 1), [k, layout.STAGES + k], upto) >> _SHIFT
        return out[:, 0], out[:, 1]


def load_into_float(qnet: IntegerX0Net, net: X0Net) -> None:
    """Set a float module's weights to the values of an integer network (exact dequantization), e.g. to train on."""
    with torch.no_grad():
        for name in conv_names(qnet.cfg):
            w, b = qnet.weights[name]
            net.convs[name].weight.copy_(w.double() / (1 << WEIGHT_BITS))
            net.convs[name].bias.copy_(b.double() / (1 << (WEIGHT_BITS + layout.ACT_BITS)))


def exact_conv(x: torch.Tensor, mat: torch.Tensor, k: int, max_cells: int = 1 << 22) -> torch.Tensor:
    """'Same' convolution of int64 x (B, I, h, w) with a float64 (O, I*k*k) integer matrix, exactly, as int64
    (B, O, h, w). Output rows go in bands so that the im2col buffer stays under max_cells float64 values."""
    bsz, chans, height, width = x.shape
    pad = k // 2
    xp = F.pad(x.double(), (pad, pad, pad, pad))
    band = max(1, max_cells // max(1, bsz * chans * k * k * width))
    out = []
    for r0 in range(0, height, band):
        r1 = min(height, r0 + band)
        cols = F.unfold(xp[:, :, r0:r1 + 2 * pad], k)  # (B, I*k*k, (r1-r0)*w)
        out.append(torch.matmul(mat, cols).to(torch.int64).view(bsz, mat.shape[0], r1 - r0, width))
    return torch.cat(out, 2) if len(out) > 1 else out[0]


def coder_params(mean_out: torch.Tensor, log_scale_out: torch.Tensor, rows: torch.Tensor):
    """Integer outputs -> the coder's parameters: conditional mean rows (rows + mean offset, 0..2048) and sigma
    indices (0..SIGMA_TABLE_SIZE-1), as int64 tensors shaped like rows."""
    mean_rows = (rows + ((mean_out + 8) >> 4)).clamp(0, 256 * entropy.PIXEL_MEAN_GRID)
    sigma_index = ((log_scale_out + 64) >> 7).clamp(0, entropy.SIGMA_TABLE_SIZE - 1)
    return mean_rows, sigma_index


def batch_integer_inputs(x_t: torch.Tensor, rows: torch.Tensor, pixels: torch.Tensor):
    """Training-layout batch (x_t (B, 3, H, W) float, rows int64, pixels uint8; H, W even) -> integer cond (B, 24,
    h, w), residual inputs, rows and pixels as stages (B, STAGES, h, w) int64."""
    cond = torch.cat([layout.to_stages(layout.quantize_x_t(x_t)), layout.to_stages(rows - layout.ROW_CENTRE)], 1)
    r8 = 8 * pixels.to(torch.int64) - rows + 4
    return cond, layout.to_stages(r8 << layout.RESIDUAL_SHIFT), layout.to_stages(rows), layout.to_stages(
        pixels.to(torch.int64))


@torch.no_grad()
def evaluate(net: IntegerX0Net, data: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Mean exact bits per sub-pixel of the integer network on data (x_t, rows, pixels as in training)."""
    total, count = 0.0, 0
    for i in range(0, len(data["pixels"]), batch_size):
        cond, res, rows, pixels = batch_integer_inputs(data["x_t"][i:i + batch_size], data["rows"][i:i + batch_size],
                                                       data["pixels"][i:i + batch_size])
        mean_rows, sigma_index = coder_params(*net.heads(net.trunk(cond), res), rows)
        total += entropy.pixel_bits(pixels.numpy().ravel(), mean_rows.numpy().ravel(), sigma_index.numpy().ravel())
        count += pixels.numel()
    return total / count
