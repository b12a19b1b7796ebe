"""The learned x_0 layer: stage layout, integer exactness, causality, coding round trips, storage, codec use."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, codec_model_id, encode
from ddpmcodec.container import header as container
from ddpmcodec.entropy import rans as entropy
from ddpmcodec.entropy.x0net import coding, integer, layout, store
from ddpmcodec.entropy.x0net.model import X0Net, X0NetConfig
from ddpmcodec.errors import FormatError, InputError
from ddpmcodec.network.model_io import load_model
from ddpmcodec.schedule.steps import profile_for
from ddpmcodec.testing import make_tiny_model, smooth_image, tiny_x0_net, write_tiny_x0_layer

FAST = CodecSettings(n_steps=12, budget_bits=6, margin_bits=2, t_end=3)


def _random_net(seed: int = 0, scale: float = 0.05) -> integer.IntegerX0Net:
    torch.manual_seed(seed)
    net = X0Net(X0NetConfig(t_end=3, per_stage=3, cond_width=8, cond_layers=1, layers=2))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, scale)
    return integer.IntegerX0Net.from_float(net)


def _image_inputs(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = smooth_image(h, w, seed)
    rows = entropy.quantize_pixel_means(np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255))
    x_t = torch.from_numpy(pixels / 127.5 - 1 + rng.normal(0, 0.05, pixels.shape)).float()
    return pixels, rows, x_t


def test_stage_layout_round_trip_and_order():
    x = torch.arange(3 * 4 * 6).view(3, 4, 6)
    st = layout.to_stages(x)
    assert st.shape == (layout.STAGES, 2, 3)
    assert torch.equal(layout.from_stages(st), x)
    assert st[0, 0, 0] == x[0, 0, 0] and st[1, 0, 0] == x[1, 0, 0]  # stage 0: phase (0, 0) red, 1: green
    assert st[3, 0, 0] == x[0, 1, 1]  # second phase is (1, 1)
    assert layout.pad_even(torch.zeros(3, 5, 7)).shape == (3, 6, 8)


def test_integer_convolution_is_exact_against_int64_reference():
    rng = np.random.default_rng(1)
    x = rng.integers(-integer.ACT_LIMIT, integer.ACT_LIMIT, (1, 5, 6, 7))
    w = rng.integers(-integer.WEIGHT_LIMIT, integer.WEIGHT_LIMIT, (4, 5, 3, 3))
    got = integer.exact_conv(torch.from_numpy(x), torch.from_numpy(w.reshape(4, -1)).double(), 3).numpy()
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 4, 6, 7), dtype=object)  # Python integers: no overflow, no rounding
    for dy in range(3):
        for dx in range(3):
            patch = xp[:, :, dy:dy + 6, dx:dx + 7].astype(object)
            want += np.einsum("oc,bchw->bohw", w[:, :, dy, dx].astype(object), patch)
    assert (got.astype(object) == want).all()
    banded = integer.exact_conv(torch.from_numpy(x), torch.from_numpy(w.reshape(4, -1)).double(), 3, max_cells=60)
    assert torch.equal(banded, torch.from_numpy(got))


def test_stage_causality_and_incremental_decoder_match_full_pass():
    net = _random_net()
    cond = torch.randint(-1000, 1000, (1, 24, 5, 6))
    res = torch.randint(-3000, 3000, (1, layout.STAGES, 5, 6))
    trunk = net.trunk(cond)
    mean, scale = net.heads(trunk, res)
    for k in range(layout.STAGES):  # stage k's outputs never read residual stages >= k
        changed = res.clone()
        changed[:, k:] += 777
        m2, s2 = net.heads(trunk, changed)
        assert torch.equal(m2[:, :k + 1], mean[:, :k + 1]) and torch.equal(s2[:, :k + 1], scale[:, :k + 1])
    state, known = {}, torch.zeros_like(res)
    for k in range(layout.STAGES):
        mk, sk = net.stage_outputs(trunk, known, state, k)
        assert torch.equal(mk, mean[:, k]) and torch.equal(sk, scale[:, k])
        known[:, k] = res[:, k]


def test_quantized_network_tracks_float_network():
    torch.manual_seed(0)
    fnet = X0Net(X0NetConfig(t_end=3, per_stage=3, cond_width=8, cond_layers=1, layers=2))
    from ddpmcodec.entropy.x0net.training import batch_inputs, float_bits

    pixels, rows, x_t = _image_inputs(8, 10, seed=3)
    batch = (x_t.permute(2, 0, 1)[None], torch.from_numpy(rows).permute(2, 0, 1)[None],
             torch.from_numpy(pixels).permute(2, 0, 1)[None])
    with torch.no_grad():
        float_total = float(float_bits(fnet, batch_inputs(*batch)).sum())
    exact = coding.code_length_bits(integer.IntegerX0Net.from_float(fnet), pixels, rows, x_t)
    assert abs(exact - float_total) < 0.01 * float_total


@pytest.mark.parametrize("shape", [(8, 8), (7, 5), (1, 1), (9, 16)])
def test_coding_round_trip(shape):
    net = _random_net(seed=sum(shape))
    pixels, rows, x_t = _image_inputs(*shape, seed=sum(shape))
    enc = entropy.new_coder()
    coding.push(enc, net, pixels, rows, x_t)
    ideal = coding.code_length_bits(net, pixels, rows, x_t)
    assert enc.num_bits() <= ideal + 64
    dec = entropy.new_coder(enc.get_compressed())
    np.testing.assert_array_equal(coding.pop(dec, net, rows, x_t), pixels)


def test_store_round_trip_identity_and_errors(tmp_path):
    net = tiny_x0_net(5)
    path = tmp_path / "m.x0.safetensors"
    store.save(net, path, "abc", {"note": 1})
    layer = store.load(path)
    assert layer.t_end == 5 and layer.model_identity == "abc" and layer.summary == {"note": 1}
    assert layer.identity == store.layer_identity(net)
    assert store.layer_identity(tiny_x0_net(5, seed=1)) != layer.identity
    (tmp_path / "bad.x0.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read the x_0 layer"):
        store.load(tmp_path / "bad.x0.safetensors")
    assert store.sidecar_path(tmp_path / "model.safetensors").name == "model.x0.safetensors"


def test_sidecar_of_another_model_is_refused(tmp_path):
    model = make_tiny_model(tmp_path, seed=0)
    path = tmp_path / "tiny-r8-s0.safetensors"
    write_tiny_x0_layer(path, "0" * 32, 3)
    with pytest.raises(InputError, match="x_0 layer for model"):
        load_model(path)
    assert model.x0_layer is None


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("x0"), resolution=8, seed=0, x0_layer_t_end=3)


def test_model_carries_layer_into_codec_identity(layered, tmp_path):
    plain = make_tiny_model(tmp_path, seed=0)
    assert layered.x0_layer is not None and layered.x0_layer.t_end == 3
    assert layered.identity == plain.identity
    assert codec_model_id(layered, profile_for(layered)) != codec_model_id(plain, profile_for(plain))


@pytest.mark.parametrize("shape", [(8, 8), (11, 13)])
def test_codec_lossless_with_learned_layer(layered, shape):
    img = smooth_image(*shape, seed=5)
    res = encode(img, layered, CodecSettings(**{**FAST.__dict__, "x0_layer": "learned"}))
    assert res.header.learned_x0 == 1
    out = list(decode_progressive(res.data, layered, every_step=False))
    np.testing.assert_array_equal(out[-1].pixels, img)
    classic = encode(img, layered, CodecSettings(**{**FAST.__dict__, "x0_layer": "classic"}))
    assert classic.header.learned_x0 == 0
    np.testing.assert_array_equal(list(decode_progressive(classic.data, layered, every_step=False))[-1].pixels, img)
    auto = encode(img, layered, FAST)
    assert len(auto.data) <= max(len(res.data), len(classic.data))
    assert abs(auto.steps[-1].ideal_bits - min(res.steps[-1].ideal_bits, classic.steps[-1].ideal_bits)) < 1e-9


def test_default_t_end_follows_the_layer(layered, tmp_path):
    img = smooth_image(8, 8, seed=1)
    assert encode(img, layered, CodecSettings(n_steps=4, budget_bits=6)).header.t_end == 3
    plain = make_tiny_model(tmp_path, seed=0)
    assert encode(img, plain, CodecSettings(n_steps=4, budget_bits=6)).header.t_end == container.DEFAULTS["t_end"]
    with pytest.raises(InputError, match="no learned x_0 layer"):
        encode(img, plain, CodecSettings(n_steps=4, budget_bits=6, x0_layer="learned"))


def test_learned_flag_needs_lossless_and_the_layer(layered, tmp_path):
    img = smooth_image(8, 8, seed=2)
    res = encode(img, layered, CodecSettings(**{**FAST.__dict__, "x0_layer": "learned"}))
    body = bytearray(res.data)
    body[2] &= ~0x02  # drop the lossless flag, keep the learned one
    with pytest.raises(FormatError, match="corrupt header"):
        container.unpack(bytes(body))
    other_t = encode(img, layered, CodecSettings(**{**FAST.__dict__, "t_end": 2}))
    assert other_t.header.learned_x0 == 0  # the layer is for t_end 3 only


def test_coding_in_several_coder_calls_per_stage(monkeypatch):
    monkeypatch.setattr(coding, "SYMBOLS_PER_CALL", 7)  # large images: bounded probability tables
    net = _random_net(seed=4)
    pixels, rows, x_t = _image_inputs(13, 11, seed=4)
    enc = entropy.new_coder()
    coding.push(enc, net, pixels, rows, x_t)
    np.testing.assert_array_equal(coding.pop(entropy.new_coder(enc.get_compressed()), net, rows, x_t), pixels)


def test_cli_x0_layer_option_and_info(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cli.main import main

    make_tiny_model(tmp_path, resolution=8, seed=0, x0_layer_t_end=3)
    model = str(tmp_path / "tiny-r8-s0-x3.safetensors")
    Image.fromarray(smooth_image(8, 8, seed=9)).save(tmp_path / "img.png")

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    fast = ["--steps", "8", "--budget", "6", "--margin", "2", "--t-end", "3", "--model", model, "-q", "-f"]
    for choice in ("learned", "classic"):
        res = run("encode", tmp_path / "img.png", "-o", tmp_path / f"{choice}.ddpm", "--x0-layer", choice, *fast)
        assert res.exit_code == 0, res.output
        info = run("info", tmp_path / f"{choice}.ddpm", "--model", model)
        assert f"exact x_0 layer (lossless, {choice})" in info.output, info.output
        assert f"size         {(tmp_path / f'{choice}.ddpm').stat().st_size} bytes" in info.output  # whole file
        res = run("decode", tmp_path / f"{choice}.ddpm", "-o", tmp_path / f"{choice}.png", "--model", model, "-q", "-f")
        assert res.exit_code == 0, res.output
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{choice}.png")), smooth_image(8, 8, seed=9))
    res = run("encode", tmp_path / "img.png", "-o", tmp_path / "b.ddpm", "--mode", "bitsback", "--x0-layer", "learned",
              "--model", model, "-q", "-f")
    assert res.exit_code == 1 and "--x0-layer" in res.output and "Traceback" not in res.output


def test_lossy_stop_below_the_default_t_end_extends_the_chain(layered):
    img = smooth_image(8, 8, seed=3)
    res = encode(img, layered, CodecSettings(n_steps=6, budget_bits=6), stop_at_t=2)
    assert res.header.t_end == 2 and not res.header.lossless and res.steps[-1].t == 2
    out = list(decode_progressive(res.data, layered))
    assert out[-1].t == 2 and out[-1].pixels.shape == img.shape
    assert encode(img, layered, CodecSettings(n_steps=6, budget_bits=6), stop_at_t=5).header.t_end == 3
    exact_end = encode(img, layered, CodecSettings(n_steps=6, budget_bits=6), stop_at_t=3)
    assert not exact_end.header.lossless and exact_end.steps[-1].t == 3


def test_target_bpp_past_the_last_lossy_stop_tries_a_deeper_chain(layered):
    from ddpmcodec.codec.stop_points import encode_within_bpp, stop_of

    img = smooth_image(8, 8, seed=1)
    settings = CodecSettings(n_steps=12, budget_bits=6)
    full = encode(img, layered, settings)
    last_lossy = full.steps[full.header.steps_present].bytes_if_stopped
    target = 8 * (last_lossy + len(full.data)) / 2 / img[..., 0].size  # between the last lossy stop and lossless
    data, res, stop = encode_within_bpp(img, layered, settings, target, deep_t_end=1)
    assert len(data) <= target * img[..., 0].size / 8 and stop is stop_of(res, data)
    assert stop.psnr > full.steps[full.header.steps_present].psnr and res.header.t_end == 1  # the deeper chain won
    assert list(decode_progressive(data, layered))[-1].t == stop.t
    fixed = encode_within_bpp(img, layered, CodecSettings(n_steps=12, budget_bits=6, t_end=3), target, deep_t_end=1)
    assert fixed[1].header.t_end == 3  # an explicit t_end is kept


def test_damaged_learned_layer_files_never_decode_to_a_wrong_image(layered):
    from ddpmcodec.errors import CodecError

    img = smooth_image(8, 8, seed=11)
    data = encode(img, layered, CodecSettings(**{**FAST.__dict__, "x0_layer": "learned"})).data
    assert container.unpack(data).header.learned_x0
    wrong = []
    for pos in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= bit
            try:
                out = list(decode_progressive(bytes(bad), layered, every_step=False))
            except CodecError:
                continue
            if out and out[-1].t == 0 and not np.array_equal(out[-1].pixels, img):
                wrong.append((pos, bit))
    assert not wrong


def test_stage_stop_probe_is_exact_only_when_every_stage_is_known():
    """eval.x0_stage_stops: with all 12 stages exact the estimate is the image, with none it is not; the stages' bits
    add up to the layer's code length."""
    from eval.x0_stage_stops import stage_stop_errors

    net = _random_net(seed=3)
    pixels, rows, x_t = _image_inputs(8, 6, seed=3)
    sq, bits = stage_stop_errors(net, x_t.numpy().transpose(2, 0, 1), rows.transpose(2, 0, 1),
                                 pixels.transpose(2, 0, 1))
    assert sq.shape == (layout.STAGES + 1,) and sq[-1] == 0 and sq[0] > 0
    assert float(bits.sum()) == pytest.approx(coding.code_length_bits(net, pixels, rows, x_t), rel=1e-9)
