"""Weights I/O: our format, pytorch_diffusion state dicts, diffusers folders, identity, and every failure path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.errors import InputError
from ddpmcodec.network.model_io import FORMAT_TAG, compute_identity, load_model, save_model
from ddpmcodec.network.weight_layouts import diffusers_to_pytorch_diffusion, unet_config_from_diffusers
from ddpmcodec.testing import random_unet
from ddpmcodec.network.unet import UNet, UNetConfig

# google/ddpm-cifar10-32's unet/config.json (diffusers UNet2DModel), as published.
CIFAR10_DIFFUSERS_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


# ---- an independent writer for diffusers UNet2DModel names (the documented module tree) ---------------------------
def _resnet(dst: str, src: str, sd: dict, out: dict) -> None:
    for d, s in [("norm1", "norm1"), ("conv1", "conv1"), ("time_emb_proj", "temb_proj"), ("norm2", "norm2"),
                 ("conv2", "conv2"), ("conv_shortcut", "nin_shortcut")]:
        if f"{src}.{s}.weight" in sd:
            out[f"{dst}.{d}.weight"], out[f"{dst}.{d}.bias"] = sd.pop(f"{src}.{s}.weight"), sd.pop(f"{src}.{s}.bias")


def _attention(dst: str, src: str, sd: dict, out: dict, old: bool) -> None:
    names = ["query", "key", "value", "proj_attn"] if old else ["to_q", "to_k", "to_v", "to_out.0"]
    out[f"{dst}.group_norm.weight"] = sd.pop(f"{src}.norm.weight")
    out[f"{dst}.group_norm.bias"] = sd.pop(f"{src}.norm.bias")
    for d, s in zip(names, ["q", "k", "v", "proj_out"]):
        out[f"{dst}.{d}.weight"] = sd.pop(f"{src}.{s}.weight")[:, :, 0, 0]  # Linear (out, in)
        out[f"{dst}.{d}.bias"] = sd.pop(f"{src}.{s}.bias")


def to_diffusers(state_dict: dict, cfg: UNetConfig, old_attention_names: bool = False) -> dict:
    """Walk UNet2DModel's modules (down_blocks low->high res, up_blocks high->low level index) and fill them."""
    sd, out, n = dict(state_dict), {}, len(cfg.ch_mult)
    for d, s in [("conv_in", "conv_in"), ("time_embedding.linear_1", "temb.dense.0"),
                 ("time_embedding.linear_2", "temb.dense.1"), ("conv_norm_out", "norm_out"), ("conv_out", "conv_out")]:
        out[f"{d}.weight"], out[f"{d}.bias"] = sd.pop(f"{s}.weight"), sd.pop(f"{s}.bias")
    for i in range(n):
        for j in range(cfg.num_res_blocks):
            _resnet(f"down_blocks.{i}.resnets.{j}", f"down.{i}.block.{j}", sd, out)
            if i in cfg.attn_levels:
                _attention(f"down_blocks.{i}.attentions.{j}", f"down.{i}.attn.{j}", sd, out, old_attention_names)
        if i < n - 1:
            for p in ("weight", "bias"):
                out[f"down_blocks.{i}.downsamplers.0.conv.{p}"] = sd.pop(f"down.{i}.downsample.conv.{p}")
    _resnet("mid_block.resnets.0", "mid.block_1", sd, out)
    _attention("mid_block.attentions.0", "mid.attn_1", sd, out, old_attention_names)
    _resnet("mid_block.resnets.1", "mid.block_2", sd, out)
    for k in range(n):  # diffusers up block k runs at the resolution of our level n-1-k
        level = n - 1 - k
        for j in range(cfg.num_res_blocks + 1):
            _resnet(f"up_blocks.{k}.resnets.{j}", f"up.{level}.block.{j}", sd, out)
            if level in cfg.attn_levels:
                _attention(f"up_blocks.{k}.attentions.{j}", f"up.{level}.attn.{j}", sd, out, old_attention_names)
        if k < n - 1:
            for p in ("weight", "bias"):
                out[f"up_blocks.{k}.upsamplers.0.conv.{p}"] = sd.pop(f"up.{level}.upsample.conv.{p}")
    assert not sd, f"tensors not placed: {sorted(sd)[:5]}"
    return out


def write_diffusers_folder(folder: Path, net: UNet, cfg: dict, old_names: bool = False, pickle: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.contiguous() for k, v in to_diffusers(net.state_dict(), net.config, old_names).items()}
    if pickle:
        torch.save(sd, folder / "diffusion_pytorch_model.bin")
    else:
        save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_diffusers_names_match_the_published_module_tree():
    """Shapes taken from google/ddpm-cat-256's module printout (6 levels, attention at 16x16), built with
    layers_per_block=1: checks level order, reversed up blocks, channel counts and attention placement."""
    cfg = UNetConfig(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=1, attn_resolutions=(16,), resolution=256)
    with torch.device("meta"):
        ours = UNet(cfg).state_dict()
    d = to_diffusers(ours, cfg)
    expected = {
        "time_embedding.linear_1.weight": (512, 128), "conv_norm_out.weight": (128,),
        "down_blocks.2.resnets.0.conv_shortcut.weight": (256, 128, 1, 1),
        "down_blocks.4.attentions.0.to_q.weight": (512, 512),
        "down_blocks.4.downsamplers.0.conv.weight": (512, 512, 3, 3),
        "mid_block.attentions.0.to_out.0.weight": (512, 512), "mid_block.resnets.1.time_emb_proj.weight": (512, 512),
        "up_blocks.0.resnets.1.conv_shortcut.weight": (512, 1024, 1, 1),
        "up_blocks.1.attentions.1.group_norm.weight": (512,),
        "up_blocks.1.resnets.1.norm1.weight": (768,), "up_blocks.2.resnets.0.conv1.weight": (256, 768, 3, 3),
        "up_blocks.3.resnets.1.norm1.weight": (384,), "up_blocks.4.resnets.0.conv1.weight": (128, 384, 3, 3),
        "up_blocks.4.upsamplers.0.conv.weight": (128, 128, 3, 3),
        "up_blocks.5.resnets.1.conv_shortcut.weight": (128, 256, 1, 1),
    }
    for name, shape in expected.items():
        assert tuple(d[name].shape) == shape, name
    assert not any(k.startswith(("up_blocks.5.upsamplers", "down_blocks.5.downsamplers", "up_blocks.2.attentions"))
                   for k in d)
    assert sum(k.endswith("to_q.weight") for k in d) == 1 + 1 + 2  # down 4, mid, up 1 (x2)
    back = diffusers_to_pytorch_diffusion(d, n_levels=6)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    cat_cfg = dict(CIFAR10_DIFFUSERS_CONFIG, block_out_channels=[128, 128, 256, 256, 512, 512], sample_size=256,
                   layers_per_block=1, down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4)
    assert unet_config_from_diffusers(cat_cfg) == UNetConfig(**{**cfg.to_dict(), "dropout": 0.1})


def test_cifar10_diffusers_config_is_the_paper_model():
    assert unet_config_from_diffusers(CIFAR10_DIFFUSERS_CONFIG) == UNetConfig()


# ---- the official 35.7M shapes in every layout --------------------------------------------------------------------
@pytest.fixture(scope="module")
def paper_sized(tmp_path_factory):
    """Random ch=128 weights, a probe input and the reference eps/identity from the in-memory network."""
    net = random_unet(UNetConfig(), seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 700])
    with torch.no_grad():
        eps = net(x, t - 1)
    identity = compute_identity(net.state_dict(), UNetConfig(), DiffusionConfig())
    return dict(net=net, x=x, t=t, eps=eps, identity=identity, dir=tmp_path_factory.mktemp("paper"))


def _check_same(model, ref):
    assert model.identity == ref["identity"]
    assert model.unet_config.to_dict() | {"dropout": 0} == UNetConfig().to_dict() | {"dropout": 0}
    assert (model.eps(ref["x"], ref["t"]) - ref["eps"]).abs().max().item() <= 1e-5


def test_paper_sized_our_format(paper_sized):
    path = save_model(paper_sized["dir"] / "ours.safetensors", paper_sized["net"], UNetConfig(), DiffusionConfig(),
                      "random-ch128", metadata={"note": "test"})
    model = load_model(path)
    _check_same(model, paper_sized)
    assert model.name == "random-ch128" and model.metadata == {"note": "test"}


def test_paper_sized_pytorch_diffusion_ckpt(paper_sized):
    path = paper_sized["dir"] / "official.ckpt"
    torch.save(paper_sized["net"].state_dict(), path)
    _check_same(load_model(path, allow_pickle=True), paper_sized)


@pytest.mark.parametrize("old_names", [False, True], ids=["to_q", "query"])
def test_paper_sized_diffusers_folder(paper_sized, old_names):
    folder = write_diffusers_folder(paper_sized["dir"] / f"diffusers-{old_names}", paper_sized["net"],
                                    CIFAR10_DIFFUSERS_CONFIG, old_names=old_names)
    model = load_model(folder)
    _check_same(model, paper_sized)
    assert model.metadata["source"]["layout"] == "diffusers"


# ---- round trip, identity -----------------------------------------------------------------------------------------
def test_round_trip_keeps_eps_identity_and_metadata(tiny_model, tmp_path):
    path = save_model(tmp_path / "again.safetensors", tiny_model.net, tiny_model.unet_config, tiny_model.diffusion,
                      "again", metadata={"calibration": {"mse": [0.5, 0.25]}})
    again = load_model(path)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(again.eps(x, 17), tiny_model.eps(x, 17))
    assert again.identity == tiny_model.identity
    assert again.metadata == {"calibration": {"mse": [0.5, 0.25]}} and again.name == "again"
    assert not again.net.training and again.device == torch.device("cpu")


def test_eps_accepts_int_or_tensor_steps(tiny_model):
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(tiny_model.eps(x, 5), tiny_model.eps(x, torch.tensor([5, 5])))
    with torch.no_grad():
        assert torch.equal(tiny_model.eps(x, 5), tiny_model.net(x, torch.tensor([4, 4])))  # 1-based -> 0-based
    for bad in (0, 1001, torch.tensor([0, 3])):
        with pytest.raises(ValueError):
            tiny_model.eps(x, bad)
    assert tiny_model.to("cpu") is tiny_model


def test_identity_tracks_content_not_layout_or_dropout(tiny_model):
    sd, cfg, dif = tiny_model.net.state_dict(), tiny_model.unet_config, tiny_model.diffusion
    assert compute_identity(sd, cfg, dif) == tiny_model.identity
    assert compute_identity(sd, UNetConfig(**{**cfg.to_dict(), "dropout": 0.3}), dif) == tiny_model.identity
    assert compute_identity(sd, cfg, DiffusionConfig(T=999)) != tiny_model.identity
    changed = dict(sd, **{"conv_out.bias": sd["conv_out.bias"] + 1e-6})
    assert compute_identity(changed, cfg, dif) != tiny_model.identity


def test_identity_is_stable():
    """Guards the canonical encoding: changing it silently would orphan every file coded so far."""
    sd = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.tensor([0.5, -1.0])}
    golden = "49d8b3efa6b273d31764cfec18b8214c"
    assert compute_identity(sd, UNetConfig(), DiffusionConfig()) == golden
    assert compute_identity({k: sd[k].double() for k in reversed(list(sd))}, UNetConfig(), DiffusionConfig()) == golden
    assert load_model("default").identity == "4eb941ff23a0e9b0397a1e072f8689d4"  # ddpmcodec/models/MODEL_CARD.md


# ---- failures are InputError with one line ------------------------------------------------------------------------
def _raises_one_line(match: str, fn, *args, **kwargs) -> None:
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_pickle_refused_without_allow_pickle(tiny_model, tmp_path):
    for name in ("m.ckpt", "m.pt", "m.pth"):
        torch.save(tiny_model.net.state_dict(), tmp_path / name)
        _raises_one_line("--allow-pickle", load_model, tmp_path / name, unet_config=tiny_model.unet_config)
    folder = write_diffusers_folder(tmp_path / "dbin", tiny_model.net, _tiny_diffusers_config(), pickle=True)
    _raises_one_line("--allow-pickle", load_model, folder)
    assert load_model(folder, allow_pickle=True).identity == tiny_model.identity


class _NotATensor:
    pass


def test_pickle_with_code_refused_even_when_allowed(tmp_path):
    torch.save({"conv_in.weight": _NotATensor()}, tmp_path / "evil.pt")
    _raises_one_line("cannot read evil.pt", load_model, tmp_path / "evil.pt", allow_pickle=True)


def test_missing_unknown_and_corrupt_files(tmp_path):
    _raises_one_line("model not found", load_model, tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _raises_one_line("not a valid safetensors", load_model, tmp_path / "junk.safetensors")
    (tmp_path / "m.npz").write_bytes(b"PK")
    _raises_one_line("unsupported model file type", load_model, tmp_path / "m.npz")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    _raises_one_line("unknown weights layout", load_model, tmp_path / "other.safetensors")
    (tmp_path / "empty").mkdir()
    _raises_one_line("not a diffusers", load_model, tmp_path / "empty")


def test_truncated_file(tiny_model, tmp_path):
    path = save_model(tmp_path / "t.safetensors", tiny_model.net, tiny_model.unet_config, tiny_model.diffusion, "t")
    path.write_bytes(path.read_bytes()[:-100])
    _raises_one_line("not a valid safetensors", load_model, path)


def _rewrite(tmp_path: Path, model, edit, header_edit=None) -> Path:
    """Our-format file whose tensors (and optionally header) were edited after the fact."""
    src = save_model(tmp_path / "src.safetensors", model.net, model.unet_config, model.diffusion, "x")
    from safetensors import safe_open
    with safe_open(str(src), "pt") as f:
        header, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(sd)
    if header_edit:
        header_edit(header)
    save_file(sd, str(tmp_path / "edited.safetensors"), metadata=header)
    return tmp_path / "edited.safetensors"


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.update({"conv_in.weight": torch.zeros(32, 3, 5, 5)}), "shape mismatch for conv_in.weight"),
    (lambda sd: sd.pop("mid.attn_1.q.bias"), "1 missing"),
    (lambda sd: sd.update({"extra.weight": torch.zeros(1)}), "1 unexpected"),
    (lambda sd: sd["conv_out.bias"].fill_(float("nan")), "NaN"),
    (lambda sd: sd["conv_out.bias"].add_(1.0), "does not match the stored"),
    (lambda sd: sd.update({"conv_in.bias": torch.zeros(32, dtype=torch.int32)}), "not floating point"),
])
def test_tampered_tensors(tiny_model, tmp_path, edit, match):
    _raises_one_line(match, load_model, _rewrite(tmp_path, tiny_model, edit))


@pytest.mark.parametrize("header_edit,match", [
    (lambda h: h.update({"ddpmcodec.format": "ddpmcodec-model/9"}), "unsupported model format"),
    (lambda h: h.update({"unet_config": "{"}), "unet_config"),
    (lambda h: h.update({"unet_config": json.dumps({"ch": 48})}), "invalid config"),
])
def test_bad_headers(tiny_model, tmp_path, header_edit, match):
    _raises_one_line(match, load_model, _rewrite(tmp_path, tiny_model, lambda sd: None, header_edit))


def test_wrong_unet_config_override(tiny_model, tmp_path):
    path = save_model(tmp_path / "m.safetensors", tiny_model.net, tiny_model.unet_config, tiny_model.diffusion, "m")
    _raises_one_line("weights do not match|shape mismatch", load_model, path, unet_config=UNetConfig(ch=32))


def _tiny_diffusers_config() -> dict:
    return dict(CIFAR10_DIFFUSERS_CONFIG, block_out_channels=[32, 64], layers_per_block=1, sample_size=8,
                down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"])


@pytest.mark.parametrize("key,value", [
    ("flip_sin_to_cos", True), ("freq_shift", 0), ("downsample_padding", 1), ("attention_head_dim", 8),
    ("norm_eps", 1e-5), ("_class_name", "UNet2DConditionModel"),
])
def test_diffusers_configs_that_compute_something_else_are_refused(tiny_model, tmp_path, key, value):
    folder = write_diffusers_folder(tmp_path / "d", tiny_model.net, dict(_tiny_diffusers_config(), **{key: value}))
    _raises_one_line(key if not key.startswith("_") else "not supported", load_model, folder)


def test_diffusers_pipeline_folder_reads_scheduler(tiny_model, tmp_path):
    write_diffusers_folder(tmp_path / "pipe" / "unet", tiny_model.net, _tiny_diffusers_config())
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
         "beta_start": 0.0001, "beta_end": 0.02, "variance_type": "fixed_small"}))
    model = load_model(tmp_path / "pipe")
    assert model.identity == tiny_model.identity and model.diffusion == DiffusionConfig()


def test_diffusers_weights_without_config_are_refused(tiny_model, tmp_path):
    sd = to_diffusers(tiny_model.net.state_dict(), tiny_model.unet_config)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "flat.safetensors"))
    _raises_one_line("config.json", load_model, tmp_path / "flat.safetensors")


def test_our_header_format_tag(tiny_model, tmp_path):
    from safetensors import safe_open
    path = save_model(tmp_path / "m.safetensors", tiny_model.net, tiny_model.unet_config, tiny_model.diffusion, "m")
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    assert header["ddpmcodec.format"] == FORMAT_TAG and header["name"] == "m"
    assert UNetConfig.from_dict(json.loads(header["unet_config"])) == tiny_model.unet_config
    assert DiffusionConfig.from_dict(json.loads(header["diffusion_config"])) == tiny_model.diffusion


# ---- the shared bootstrap model -----------------------------------------------------------------------------------
def test_bootstrap_model_loads_strictly_and_matches_bundled(bootstrap_model_path):
    model = load_model(bootstrap_model_path)
    assert model.unet_config == UNetConfig(ch=64)
    assert model.metadata["source"]["layout"] == "pytorch_diffusion"
    assert model.identity == load_model("default").identity  # same weights and configs, other layout
    assert load_model(bootstrap_model_path.parent).identity == model.identity  # the folder works too
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.eps(x, 3)).all()


def test_loaded_weights_do_not_follow_the_file(tmp_path):
    """A model stays intact when its weights file is rewritten in place afterwards (no memory-mapped tensors)."""
    import numpy as np
    import torch

    from ddpmcodec.testing import make_tiny_model

    model = make_tiny_model(tmp_path, resolution=8, seed=0)
    path = tmp_path / "tiny-r8-s0.safetensors"
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = model.eps(x, 10).clone()
    data = bytearray(path.read_bytes())
    with open(path, "r+b") as fh:  # overwrite the tensor bytes in place, keeping the header
        fh.seek(len(data) - 4096)
        fh.write(np.full(1024, np.nan, np.float32).tobytes())
    torch.testing.assert_close(model.eps(x, 10), before, rtol=0, atol=0)


def test_numerics_digest_is_stable_and_tied_to_the_weights(tmp_path):
    from ddpmcodec.testing import make_tiny_model

    a = make_tiny_model(tmp_path, resolution=8, seed=0)
    threads = torch.get_num_threads()
    digest = a.numerics_digest()
    try:
        torch.set_num_threads(1)
        assert a.numerics_digest() == digest  # fixed groups: no dependence on the thread count
    finally:
        torch.set_num_threads(threads)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert make_tiny_model(tmp_path, resolution=8, seed=1).numerics_digest() != digest
    assert a.numerics_digest(ts=(3,)) != digest
