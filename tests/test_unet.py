"""The DDPM U-Net: shapes, parameter count, config round trip, determinism, the bundled model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ddpmcodec.network.model_io import load_model, resolve_model_path
from ddpmcodec.testing import random_unet
from ddpmcodec.network.unet import UNet, UNetConfig, count_parameters, timestep_embedding


def test_paper_config_has_official_parameter_count():
    with torch.device("meta"):  # construct only: shapes, no memory
        net = UNet(UNetConfig())
    assert count_parameters(net) == 35_746_307


def test_width64_parameter_count():
    with torch.device("meta"):
        net = UNet(UNetConfig(ch=64))
    assert count_parameters(net) == 8_952_067


def test_parameter_names_follow_pytorch_diffusion():
    with torch.device("meta"):
        names = set(UNet(UNetConfig()).state_dict())
    for name in ["temb.dense.0.weight", "temb.dense.1.bias", "conv_in.weight", "down.0.block.1.temb_proj.weight",
                 "down.1.block.0.nin_shortcut.weight", "down.1.attn.1.proj_out.weight", "down.2.downsample.conv.bias",
                 "mid.block_1.conv1.weight", "mid.attn_1.q.weight", "mid.block_2.norm2.bias",
                 "up.0.block.2.nin_shortcut.weight", "up.1.attn.2.k.weight", "up.3.upsample.conv.weight",
                 "norm_out.weight", "conv_out.bias"]:
        assert name in names, name
    assert "down.3.downsample.conv.weight" not in names and "up.0.upsample.conv.weight" not in names
    assert not any(n.startswith(("down.0.attn", "down.2.attn", "up.0.attn", "up.3.attn")) for n in names)


def test_config_round_trips_through_json():
    cfg = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8, dropout=0.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["ch_mult"] == [1, 2] and UNetConfig.from_dict(d) == cfg
    assert UNetConfig.from_dict(UNetConfig().to_dict()) == UNetConfig()


@pytest.mark.parametrize("kwargs", [dict(ch=48), dict(resolution=30), dict(ch_mult=()), dict(num_res_blocks=0)])
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        UNetConfig(**kwargs)


def test_timestep_embedding_formula():
    emb = timestep_embedding(torch.tensor([0, 7, 999]), 64)
    assert emb.shape == (3, 64)
    k, t = 5, 7
    freq = math.exp(-math.log(10000.0) * k / 31)
    assert emb[1, k].item() == pytest.approx(math.sin(t * freq), abs=1e-6)
    assert emb[1, 32 + k].item() == pytest.approx(math.cos(t * freq), abs=1e-6)
    assert torch.equal(emb[0, :32], torch.zeros(32)) and torch.equal(emb[0, 32:], torch.ones(32))


def test_forward_shapes_and_sizes(tiny_unet_config):
    net = random_unet(tiny_unet_config, seed=1)
    with torch.no_grad():
        for h, w in [(8, 8), (16, 8), (4, 12)]:  # any multiple of 2^(levels-1) = 2
            out = net(torch.randn(3, 3, h, w), torch.tensor([0, 10, 999]))
            assert out.shape == (3, 3, h, w) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 7, 8), torch.tensor([0]))
    with pytest.raises(ValueError):
        net(torch.randn(2, 3, 8, 8), torch.tensor([0]))


def test_eval_output_is_deterministic_and_depends_on_t(tiny_unet_config):
    a, b = random_unet(tiny_unet_config, seed=3), random_unet(tiny_unet_config, seed=3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 5])
    with torch.no_grad():
        ya, yb, ya2 = a(x, t), b(x, t), a(x, t)
        yt = a(x, torch.tensor([6, 600]))
    assert torch.equal(ya, yb) and torch.equal(ya, ya2)
    assert not torch.allclose(ya, yt)
    assert not torch.equal(random_unet(tiny_unet_config, seed=4)(x, t), ya)


def test_batch_elements_are_independent(tiny_unet_config):
    net = random_unet(tiny_unet_config, seed=2)
    x = torch.randn(4, 3, 8, 8)
    t = torch.tensor([1, 50, 500, 999])
    with torch.no_grad():
        full = net(x, t)
        single = torch.cat([net(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)


def test_bundled_model_loads_strictly_and_gives_finite_eps():
    assert resolve_model_path("default").name == "ddpm-cifar10-ch64.safetensors"
    model = load_model("default")
    assert model.name == "ddpm-cifar10-ch64"
    assert model.unet_config == UNetConfig(ch=64)
    assert count_parameters(model.net) == 8_952_067
    assert len(model.identity) == 32 and int(model.identity, 16) >= 0
    assert model.metadata["training"]["steps"] == 27017
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for t in (1, 500, 1000):
        eps = model.eps(x, t)
        assert eps.shape == x.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()


def _smooth_batch() -> torch.Tensor:
    """Two 32x32 synthetic images in [-1, 1] (gradients), deterministic everywhere."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    return torch.stack([0.8 * xx, 0.6 * yy, 0.9 * xx * yy])[None].repeat(2, 1, 1, 1)


def test_bundled_model_denoises_golden():
    """Guards the architecture against silent changes: eps-MSE on a fixed noisy synthetic batch (values measured
    with this code; a wrong embedding, attention scale or skip order moves them by far more than the tolerance)."""
    from ddpmcodec.diffusion import Schedule, q_sample

    model = load_model("default")
    sched = Schedule(model.diffusion)
    x0 = _smooth_batch()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for t, mse in [(10, 0.101238), (100, 0.035054), (500, 0.012448)]:
        eps = model.eps(q_sample(sched, x0, t, noise), t)
        assert ((eps - noise) ** 2).mean().item() == pytest.approx(mse, rel=2e-3)


def test_bootstrap_l_simple_on_dev_images(shared_dir):
    """The bundled network reproduces the bootstrap's dev L_simple (0.0316 on 256 images) on 64 real test images."""
    import numpy as np

    from ddpmcodec.diffusion import Schedule, net_timestep, q_sample_batched, to_model_space

    data = shared_dir / "data" / "cifar10-test-dev.npz"
    if not data.is_file():
        pytest.skip(f"{data} not present")
    x0 = to_model_space(np.load(data)["images"][:64]).permute(0, 3, 1, 2)
    model = load_model("default")
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, model.diffusion.T + 1, (64,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    eps = model.eps(q_sample_batched(Schedule(model.diffusion), x0, t, noise), t)
    assert 0.015 < ((eps - noise) ** 2).mean().item() < 0.05
    assert net_timestep(t).min() == t.min() - 1
