"""Helpers for tests: tiny seeded U-Nets saved and reloaded through :func:`ddpmcodec.model_io.load_model`.

Random weights are drawn from an explicit ``torch.Generator`` (the global RNG is untouched) and GroupNorm affine
parameters are perturbed away from (1, 0), so a loader that swaps two same-shaped tensors changes the output.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddpmcodec.container import header as container
from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.entropy.rans import stack_to_bytes
from ddpmcodec.network.model_io import DiffusionModel, load_model, save_model
from ddpmcodec.network.unet import UNet, UNetConfig


def tiny_unet_config(resolution: int = 8) -> UNetConfig:
    """ch=32, two levels (attention on the second, at resolution/2), one res block; ~0.3M parameters."""
    return UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(resolution // 2,),
                      resolution=resolution, dropout=0.0)


def random_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """UNet(config) in eval mode with seeded random weights (uniform +-1/sqrt(fan_in); GN affine ~ N(1|0, 0.1))."""
    with torch.device("meta"):
        net = UNet(config)
    net = net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                module.weight.uniform_(-bound, bound, generator=g)
                module.bias.uniform_(-bound, bound, generator=g)
            elif isinstance(module, nn.GroupNorm):
                module.weight.normal_(1.0, 0.1, generator=g)
                module.bias.normal_(0.0, 0.1, generator=g)
    return net.eval()


def make_tiny_model(tmp_path: str | Path, resolution: int = 8, seed: int = 0,
                    diffusion: DiffusionConfig = DiffusionConfig(), x0_layer_t_end: int | None = None) -> DiffusionModel:
    """A tiny random model written to ``tmp_path/tiny-<seed>.safetensors`` and loaded back (real identity); with
    x0_layer_t_end, also a tiny random learned x_0 layer for that t_end beside it (loaded with the model)."""
    config = tiny_unet_config(resolution)
    name = f"tiny-r{resolution}-s{seed}" + (f"-x{x0_layer_t_end}" if x0_layer_t_end else "")
    path = Path(tmp_path) / f"{name}.safetensors"
    save_model(path, random_unet(config, seed), config, diffusion, name=name)
    if x0_layer_t_end:
        write_tiny_x0_layer(path, load_model(path).identity, x0_layer_t_end, seed)
    return load_model(path)


def tiny_x0_net(t_end: int, seed: int = 0):
    """A small random learned x_0 layer (integer form); its untrained head predicts x^_0 with sigma ~3 levels."""
    import torch

    from ddpmcodec.entropy.x0net.integer import IntegerX0Net
    from ddpmcodec.entropy.x0net.model import X0Net, X0NetConfig

    torch.manual_seed(seed)
    return IntegerX0Net.from_float(X0Net(X0NetConfig(t_end=t_end, per_stage=2, cond_width=8, cond_layers=1,
                                                     layers=1)))


def write_tiny_x0_layer(model_path: str | Path, model_identity: str, t_end: int, seed: int = 0) -> Path:
    from ddpmcodec.entropy.x0net import store

    path = store.sidecar_path(Path(model_path))
    store.save(tiny_x0_net(t_end, seed), path, model_identity)
    return path


def smooth_image(h: int, w: int, seed: int = 0):
    """A seeded (h, w, 3) uint8 test image with image-like local correlation (random walks along both axes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.integers(-9, 10, (h, w, 3)), axis=1) + np.cumsum(rng.integers(-5, 6, (h, 1, 3)), axis=0)
    return np.clip(walk + 128, 0, 255).astype(np.uint8)


def pack_without_steps(header: container.Header) -> bytes:
    """A (crafted) file with no coded data: header only, or, for an end-checked header, the bare end state its check
    needs as payload (what the encoder writes for a file stopped at x_T)."""
    state = header.end_state()
    payload = b"" if state is None else stack_to_bytes(np.array([state], np.uint32))
    return container.pack(dataclasses.replace(header, payload_bytes=len(payload)), payload)
