"""Weight layouts of other DDPM code bases, as pure functions of state dicts and configs.

pytorch_diffusion (the PyTorch port of the official checkpoints) uses our parameter names, so only its U-Net config
must be inferred from tensor shapes; diffusers' UNet2DModel names are mapped onto them. File reading stays in
model_io.
"""
from __future__ import annotations

import re

from ddpmcodec.errors import InputError, one_line
from ddpmcodec.network.unet import UNetConfig


# ---- pytorch_diffusion: config inference --------------------------------------------------------------------------
def infer_unet_config(sd: dict, resolution: int = 32, dropout: float = 0.1) -> UNetConfig:
    """UNetConfig implied by the tensor shapes of a pytorch_diffusion state dict (resolution is not stored)."""
    try:
        ch, in_channels = sd["conv_in.weight"].shape[:2]
        out_ch = sd["conv_out.weight"].shape[0]
        n_levels = len({k.split(".")[1] for k in sd if k.startswith("down.")})
        mult = [sd[f"down.{i}.block.0.conv1.weight"].shape[0] for i in range(n_levels)]
        nrb = len({k.split(".")[3] for k in sd if k.startswith("down.0.block.")})
        attn_levels = [i for i in range(n_levels) if f"down.{i}.attn.0.q.weight" in sd]
        with_conv = n_levels == 1 or "down.0.downsample.conv.weight" in sd
        if any(m % ch for m in mult):
            raise ValueError(f"level widths {mult} are not multiples of ch={ch}")
        return UNetConfig(ch=int(ch), out_ch=int(out_ch), ch_mult=tuple(m // ch for m in mult), num_res_blocks=nrb,
                          attn_resolutions=tuple(resolution // 2**i for i in attn_levels), dropout=dropout,
                          in_channels=int(in_channels), resolution=resolution, resamp_with_conv=with_conv)
    except KeyError as e:
        raise InputError(f"cannot infer the U-Net config: tensor {e.args[0]} is missing") from None
    except (ValueError, IndexError) as e:
        raise InputError(f"cannot infer the U-Net config: {one_line(e)}") from None


# ---- diffusers UNet2DModel ----------------------------------------------------------------------------------------
# Settings under which a diffusers UNet2DModel computes exactly the pytorch_diffusion function. Missing keys take
# diffusers' own defaults (which mostly differ, so an incomplete config is refused rather than guessed).
_DIFFUSERS_REQUIRED = {
    "flip_sin_to_cos": (True, False), "freq_shift": (0, 1), "downsample_padding": (1, 0), "norm_eps": (1e-5, 1e-6),
    "norm_num_groups": (32, 32), "act_fn": ("silu", "silu"), "time_embedding_type": ("positional", "positional"),
    "center_input_sample": (False, False), "resnet_time_scale_shift": ("default", "default"),
    "mid_block_scale_factor": (1, 1), "add_attention": (True, True), "class_embed_type": (None, None),
    "num_class_embeds": (None, None), "time_embedding_dim": (None, None), "attn_norm_num_groups": (None, None),
    "downsample_type": ("conv", "conv"), "upsample_type": ("conv", "conv"),
    "mid_block_type": ("UNetMidBlock2D", "UNetMidBlock2D"),
}
_RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2",
                 "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
               "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_TOP_NAMES = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out",
              "time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1"}
_BLOCK_RE = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_SAMPLER_RE = re.compile(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv")
_MID_RE = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def unet_config_from_diffusers(cfg: dict, dropout: float = 0.1) -> UNetConfig:
    """UNetConfig for a diffusers UNet2DModel config dict; InputError if it is not the DDPM architecture."""
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputError(f"diffusers model class {cfg['_class_name']!r} is not supported (need UNet2DModel)")
    for key, (default, needed) in _DIFFUSERS_REQUIRED.items():
        if cfg.get(key, default) != needed:
            raise InputError(f"diffusers config {key}={cfg.get(key, default)!r} is not the DDPM setting {needed!r}")
    boc = [int(c) for c in cfg["block_out_channels"]]
    down, up = list(cfg.get("down_block_types", [])), list(cfg.get("up_block_types", []))
    if len(down) != len(boc) or len(up) != len(boc) or any(b % boc[0] for b in boc):
        raise InputError("diffusers config: inconsistent block_out_channels/down_block_types/up_block_types")
    attn = [d == "AttnDownBlock2D" for d in down]
    ok_down = all(d in ("DownBlock2D", "AttnDownBlock2D") for d in down)
    if not ok_down or up != [("AttnUpBlock2D" if a else "UpBlock2D") for a in reversed(attn)]:
        raise InputError(f"diffusers config: unsupported block types {down} / {up}")
    head_dim = cfg.get("attention_head_dim", 8)
    if head_dim is not None and any(head_dim != boc[i] for i in range(len(boc)) if attn[i]):
        raise InputError(f"diffusers config: attention_head_dim={head_dim} means multi-head attention (need 1 head)")
    size = cfg.get("sample_size", 32)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise InputError(f"diffusers config: non-square sample_size {size} is not supported")
        size = size[0]
    res = int(size)
    try:
        return UNetConfig(ch=boc[0], out_ch=int(cfg.get("out_channels", 3)), ch_mult=tuple(b // boc[0] for b in boc),
                          num_res_blocks=int(cfg.get("layers_per_block", 2)),
                          attn_resolutions=tuple(res // 2**i for i in range(len(boc)) if attn[i]),
                          dropout=float(cfg.get("dropout", dropout)), in_channels=int(cfg.get("in_channels", 3)),
                          resolution=res, resamp_with_conv=True)
    except (TypeError, ValueError) as e:
        raise InputError(f"diffusers config: {one_line(e)}") from None


def diffusers_to_pytorch_diffusion(sd: dict, n_levels: int) -> dict:
    """Rename a diffusers UNet2DModel state dict to our names (up blocks reversed; Linear attention -> 1x1 conv)."""
    out = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        new, is_attn = None, False
        if module in _TOP_NAMES:
            new = f"{_TOP_NAMES[module]}.{param}"
        elif m := _BLOCK_RE.fullmatch(module):
            side, i, kind, j, leaf = m.groups()
            level = int(i) if side == "down" else n_levels - 1 - int(i)
            names, sub = (_RESNET_NAMES, "block") if kind == "resnets" else (_ATTN_NAMES, "attn")
            if leaf in names:
                new, is_attn = f"{side}.{level}.{sub}.{j}.{names[leaf]}.{param}", kind == "attentions"
        elif m := _SAMPLER_RE.fullmatch(module):
            side, i, _ = m.groups()
            level = int(i) if side == "down" else n_levels - 1 - int(i)
            new = f"{side}.{level}.{side}sample.conv.{param}"
        elif m := _MID_RE.fullmatch(module):
            kind, j, leaf = m.groups()
            if kind == "resnets" and leaf in _RESNET_NAMES and j in ("0", "1"):
                new = f"mid.block_{int(j) + 1}.{_RESNET_NAMES[leaf]}.{param}"
            elif kind == "attentions" and leaf in _ATTN_NAMES and j == "0":
                new, is_attn = f"mid.attn_1.{_ATTN_NAMES[leaf]}.{param}", True
        if new is None or param not in ("weight", "bias"):
            raise InputError(f"diffusers weights: unexpected tensor {key!r}")
        if new in out:
            raise InputError(f"diffusers weights: two tensors map to {new!r} (old and new attention names mixed?)")
        if is_attn and value.dim() == 2:  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
            value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out
