"""Bits-back ANS (ddpmcodec.bitsback) with a tiny random model: exact round trips, the returned seed, per-step x^_0,
error paths, and the CLI (pack / unpack / encode --mode bitsback / decode)."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ddpmcodec.bitsback import codec as bitsback

from ddpmcodec.container import header as container
from ddpmcodec.bitsback.codec import BitsBackSettings, Decoder, decode_images, decode_set, encode_image, encode_set
from ddpmcodec.bitsback.format import seed_estimate, seed_words
from ddpmcodec.errors import DeterminismError, FormatError, InputError, ModelMismatchError
from ddpmcodec.testing import make_tiny_model, smooth_image

FAST = BitsBackSettings(n_steps=6, grid_bits=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m"), resolution=8, seed=0)


@pytest.fixture(scope="module")
def images():
    return [smooth_image(8, 8, 1), smooth_image(11, 13, 2), smooth_image(5, 17, 3), smooth_image(1, 1, 4)]


@pytest.fixture(scope="module")
def coded_set(model, images):
    return encode_set(images, model, FAST, names=[f"im{i}.png" for i in range(len(images))])


def test_single_image_round_trip(model):
    img = smooth_image(11, 13, seed=5)
    res = encode_image(img, model, FAST)
    out = decode_images(res.data, model)
    assert len(out.images) == 1 and out.names is None and out.source_modes == ["RGB"]
    np.testing.assert_array_equal(out.images[0], img)
    assert res.seed_bits > 0 and 8 * len(res.data) == res.net_bits + res.seed_bits


@pytest.mark.parametrize("order", bitsback.ORDERS)
def test_set_round_trip_both_orders(model, images, coded_set, order):
    res = coded_set if order == "bitswap" else encode_set(images, model, BitsBackSettings(n_steps=4, order=order))
    out = decode_images(res.data, model)
    assert len(out.images) == len(images)
    for a, b in zip(out.images, images):
        np.testing.assert_array_equal(a, b)
    if order == "bitswap":
        assert out.names == [f"im{i}.png" for i in range(len(images))]


def test_bitswap_needs_fewer_initial_bits_than_bbans(model, images):
    s = BitsBackSettings(n_steps=8, grid_bits=2)
    swap = encode_set(images[:2], model, s)
    bbans = encode_set(images[:2], model, BitsBackSettings(n_steps=8, grid_bits=2, order="bbans"))
    assert swap.seed_bits * 3 < bbans.seed_bits
    # same expected net (the ELBO): equal to within the single-draw noise
    dims = sum(im.size for im in images[:2])
    assert abs(swap.net_bits - bbans.net_bits) / dims < 0.5


def test_settings_variants_round_trip(model):
    img = smooth_image(9, 8, seed=7)
    for s in (BitsBackSettings(n_steps=3, t_end=5, grid_bits=-2, seed=11), BitsBackSettings(n_steps=1, grid_bits=6)):
        out = decode_images(encode_image(img, model, s).data, model)
        np.testing.assert_array_equal(out.images[0], img)


def test_seed_returned_intact(model, coded_set):
    dec = Decoder(coded_set.data, model)
    assert all(s.t == 0 for s in dec.steps())
    h, sub = dec.file.header, dec.file.sub
    expected = seed_words(h.seed, seed_estimate(dec.file.order, sub.grid_bits, len(dec.file.chain[4]), sub.sizes))
    assert sub.consumed * 32 == coded_set.seed_bits and sub.consumed < len(expected)
    np.testing.assert_array_equal(dec.recovered_seed, expected)


def test_every_step_emits_x0_hat_in_algorithm_4_order(model, images, coded_set):
    steps = list(decode_set(coded_set.data, model, every_step=True))
    levels = bitsback.read_file(coded_set.data, model).chain[4]
    ts = [levels[0].t_prev] + [lv.t for lv in levels] + [0]
    assert [(s.image, s.t) for s in steps] == [(i, t) for i in range(len(images)) for t in ts]
    for s in steps:
        assert s.pixels.shape == images[s.image].shape and s.pixels.dtype == np.uint8
    finals = [s.pixels for s in steps if s.t == 0]
    for a, b in zip(finals, images):
        np.testing.assert_array_equal(a, b)


def test_encoder_stats_add_up(coded_set, images):
    assert [s.dims for s in coded_set.images] == [im.size for im in images]
    stack_growth = sum(s.net_bits for s in coded_set.images)
    assert stack_growth == pytest.approx(coded_set.net_bits - 8 * coded_set.overhead_bytes, abs=64)
    for s in coded_set.images:
        assert s.nelbo_bits > s.kl_bits > 0 and s.decoder_bits > 0


def test_wrong_model(tmp_path, coded_set):
    other = make_tiny_model(tmp_path, resolution=8, seed=1)
    with pytest.raises(ModelMismatchError):
        decode_images(coded_set.data, other)


def test_corrupt_payload_and_header(model, coded_set):
    data = bytearray(coded_set.data)
    data[-3] ^= 0x10
    with pytest.raises(FormatError):
        decode_images(bytes(data), model)
    data = bytearray(coded_set.data)
    data[6] ^= 0x01
    with pytest.raises(FormatError):
        decode_images(bytes(data), model)
    with pytest.raises(FormatError):
        decode_images(b"not a ddpm file at all", model)


@pytest.mark.parametrize("keep", [-1, -4, -100, 0.5, 12, 3])
def test_truncated_is_refused(model, coded_set, keep):
    """Any prefix (payload cut, sub-header cut, container header cut) is refused with a FormatError."""
    n = len(coded_set.data)
    k = int(n * keep) if isinstance(keep, float) else (n + keep if keep < 0 else keep)
    with pytest.raises(FormatError):
        decode_images(coded_set.data[:k], model)


def test_progressive_file_is_refused(model, coded_set):
    from ddpmcodec.codec.progressive import codec_model_id
    from ddpmcodec.schedule.steps import profile_for

    parsed = container.unpack(coded_set.data, codec_model_id(model, profile_for(model)), model.unet_config.resolution)
    prog = container.Header(**{**parsed.header.__dict__, "mode": container.MODE_PROGRESSIVE})
    data = container.pack(prog, parsed.payload)
    with pytest.raises(FormatError, match="progressive"):
        decode_images(data, model)


def test_decoder_with_different_numerics_fails_loudly(model, coded_set, monkeypatch):
    real_eps = model.eps

    def drifting_eps(x, t):
        return real_eps(x, t) + 1e-3

    monkeypatch.setattr(model, "eps", drifting_eps)
    with pytest.raises(DeterminismError):
        decode_images(coded_set.data, model)


def test_bad_inputs(model):
    with pytest.raises(InputError):
        encode_set([], model, FAST)
    with pytest.raises(InputError):
        encode_image(np.zeros((4, 4), np.uint8), model, FAST)
    with pytest.raises(InputError):
        encode_image(np.zeros((4, 4, 3), np.uint8), model, BitsBackSettings(order="nope"))


# ---- CLI ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_model")
    make_tiny_model(d, resolution=8, seed=0)
    return str(d / "tiny-r8-s0.safetensors")


def test_cli_constants_match_the_library():
    from cli import commands_bitsback as cb
    from ddpmcodec.bitsback.format import MAX_GRID_BITS, MIN_GRID_BITS

    d = BitsBackSettings()
    assert cb.ORDERS == bitsback.ORDERS and cb.GRID_RANGE == (MIN_GRID_BITS, MAX_GRID_BITS)
    assert (cb.DEFAULT_STEPS, cb.DEFAULT_T_END) == (d.n_steps, d.t_end) and d.grid_bits is None


def _run(args):
    from cli.main import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_pack_unpack(tmp_path, model_file, images):
    src = tmp_path / "src"
    src.mkdir()
    for i, im in enumerate(images[:3]):
        Image.fromarray(im).save(src / f"img{i}.png")
    Image.fromarray(images[1][:, :, 0]).save(src / "gray.png")  # grayscale: comes back single-channel
    out = tmp_path / "set.ddpm"
    common = ["--model", model_file, "--device", "cpu"]
    r = _run(["pack", str(src), "-o", str(out), "--steps", "4", "-q"] + common)
    assert r.exit_code == 0, r.output
    r = _run(["pack", str(src), "-o", str(out), "--steps", "4", "-q"] + common)
    assert r.exit_code == 1 and "exists" in r.output
    dst = tmp_path / "dst"
    r = _run(["unpack", str(out), "-o", str(dst), "-q"] + common)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in dst.iterdir()) == ["gray.png", "img0.png", "img1.png", "img2.png"]
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(Image.open(dst / f"img{i}.png")), images[i])
    gray = Image.open(dst / "gray.png")
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), images[1][:, :, 0])
    r = _run(["unpack", str(out), "-o", str(dst), "-q"] + common)
    assert r.exit_code == 1 and "exists" in r.output
    assert _run(["unpack", str(out), "-o", str(dst), "-q", "-f"] + common).exit_code == 0
    r = _run(["decode", str(out), "-o", str(tmp_path / "x.png"), "-q"] + common)
    assert r.exit_code == 1 and "unpack" in r.output


def test_cli_encode_decode_bitsback(tmp_path, model_file, images):
    src = tmp_path / "one.png"
    Image.fromarray(images[1]).save(src)
    out = tmp_path / "one.ddpm"
    common = ["--model", model_file, "--device", "cpu"]
    r = _run(["encode", str(src), "-o", str(out), "--mode", "bitsback", "--steps", "4", "-q"] + common)
    assert r.exit_code == 0, r.output
    r = _run(["decode", str(out), "-o", str(tmp_path / "back.png"), "-q"] + common)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back.png")), images[1])
    r = _run(["decode", str(out), "-o", str(tmp_path / "back.png"), "-q"] + common)
    assert r.exit_code == 1 and "exists" in r.output
    (tmp_path / "cut.ddpm").write_bytes(out.read_bytes()[:-8])
    r = _run(["decode", str(tmp_path / "cut.ddpm"), "-o", str(tmp_path / "cut.png"), "-q"] + common)
    assert r.exit_code == 1 and r.output.startswith("error:") and "truncated" in r.output
