"""Windowed network evaluation (ddpmcodec.network.windows) and its use by the progressive codec (header flag 0x40)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.container import header as container
from ddpmcodec.images import psnr, tile_grid, to_tiles
from ddpmcodec.network import windows
from ddpmcodec.testing import make_tiny_model, smooth_image

FAST = CodecSettings(n_steps=8, budget_bits=6, margin_bits=2)
ON, OFF = CodecSettings(**{**FAST.__dict__, "windowed": True}), CodecSettings(**{**FAST.__dict__, "windowed": False})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m"), resolution=8, seed=0)


@pytest.mark.parametrize("hw", [(8, 8), (16, 8), (24, 40), (32, 32), (8, 48)])
@pytest.mark.parametrize("geo", [(8, 4), (8, 6), (16, 8), (8, 8)])
def test_weights_are_positive_and_sum_to_one(hw, geo):
    wins = windows.windows(*hw, *geo)
    cover = torch.zeros(hw)
    total = torch.zeros(hw, dtype=torch.float64)
    for (y, x, wh, ww), w in zip(wins, windows.normalised_weights(*hw, wins)):
        assert y >= 0 and x >= 0 and y + wh <= hw[0] and x + ww <= hw[1]  # windows stay inside the image
        assert bool((w > 0).all())
        cover[y:y + wh, x:x + ww] += 1
        total[y:y + wh, x:x + ww] += w.double()
    assert bool((cover >= 1).all())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_window_starts():
    assert windows.window_starts(32, 32, 16) == [0]
    assert windows.window_starts(96, 32, 16) == [0, 16, 32, 48, 64]
    assert windows.window_starts(96, 32, 24) == [0, 24, 48, 64]
    assert windows.window_starts(40, 64, 32) == [0]


def test_canvas_round_trip_matches_image_layout():
    img = smooth_image(24, 40, seed=1)
    tiles, _ = to_tiles(img, 8)
    canvas = windows.tiles_to_canvas(tiles, tile_grid(24, 40, 8))
    expected = torch.from_numpy(img).float().div(127.5).sub(1.0).permute(2, 0, 1)
    assert torch.equal(canvas, expected)
    assert torch.equal(windows.canvas_to_tiles(canvas, 8), tiles)


def test_one_tile_equals_plain_eps(model):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (1, 500, 1000):
        assert torch.equal(windows.eps_windowed(model, x, t, (1, 1)), model.eps_reproducible(x, t).float())


def test_windowed_eps_is_smooth_across_tiles_and_local(model):
    """Inside a window's region that no other window touches, the output is that window's prediction; the whole
    result differs from per-tile evaluation (the network sees across borders)."""
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = windows.eps_windowed(model, x, 300, (2, 3))
    plain = model.eps_reproducible(x, 300)
    assert out.shape == plain.shape and not torch.equal(out, plain)
    canvas = windows.tiles_to_canvas(x, (2, 3))
    corner = model.eps_reproducible(canvas[None, :, :8, :8].contiguous(), 300)[0]
    got = windows.tiles_to_canvas(out, (2, 3))
    # only the first window covers the top-left 4x4 (close, not equal: CPU results depend on the batch size)
    assert torch.allclose(got[:, :4, :4], corner[:, :4, :4], atol=1e-5)


def test_thread_count_does_not_change_results(model):
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    img = smooth_image(20, 27, seed=4)
    before = torch.get_num_threads()
    outs, files = [], []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(windows.eps_windowed(model, x, 77, (3, 4)))
            files.append(encode(img, model, ON).data)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])
    assert files[0] == files[1]


@pytest.mark.parametrize("shape", [(16, 24), (11, 21), (8, 40)])
def test_windowed_round_trip_lossless_and_previews_match(model, shape):
    img = smooth_image(*shape, seed=sum(shape))
    res = encode(img, model, ON)
    assert res.header.windowed == 1
    assert container.unpack(res.data).header.windowed == 1 and res.data[2] & 0x40
    steps = list(decode_progressive(res.data, model))
    np.testing.assert_array_equal(steps[-1].pixels, img)
    assert [s.t for s in steps] == [s.t for s in res.steps]
    assert [s.bytes_read for s in steps] == [s.bytes_if_stopped for s in res.steps]
    for dec, enc in zip(steps[:-1], res.steps[:-1]):
        assert psnr(dec.pixels, img) == pytest.approx(enc.psnr, abs=1e-9)
    # a lossy file (encoder stop) decodes to the same preview as the lossless file's prefix
    stop = res.steps[3].t
    lossy = encode(img, model, ON, stop_at_t=stop)
    last = list(decode_progressive(lossy.data, model))[-1]
    assert last.t == stop and psnr(last.pixels, img) == pytest.approx(res.steps[3].psnr, abs=1e-9)


def test_default_is_windowed_for_multi_tile_only(model):
    from ddpmcodec.codec import progressive

    multi = encode(smooth_image(8, 16, seed=1), model, FAST)
    one = encode(smooth_image(8, 8, seed=1), model, ON)
    assert multi.header.windowed == int(progressive.WINDOWED_DEFAULT)
    assert one.header.windowed == 0 and not one.data[2] & 0x40


def test_flag_off_file_decodes_as_before(model, monkeypatch):
    """With the flag off nothing goes through windows: the file decodes per tile exactly as older builds did."""
    img = smooth_image(12, 20, seed=6)
    on = encode(img, model, ON)

    def refuse(*a, **k):
        raise AssertionError("windows used for a flag-off file")

    monkeypatch.setattr(windows, "eps_windowed", refuse)
    off = encode(img, model, OFF)
    assert off.header.windowed == 0 and not off.data[2] & 0x40
    steps = list(decode_progressive(off.data, model))
    np.testing.assert_array_equal(steps[-1].pixels, img)
    for dec, enc in zip(steps[:-1], off.steps[:-1]):
        assert psnr(dec.pixels, img) == pytest.approx(enc.psnr, abs=1e-9)
    assert on.data != off.data
    with pytest.raises(AssertionError, match="flag-off"):
        list(decode_progressive(on.data, model))


def test_flag_bits_in_header():
    assert container._F_LEARNED_X0 == 0x80
    base = dict(mode=0, model_id=b"\1\2\3\4", width=16, height=8, source_mode=0, tile=8, n_steps=50, t_end=4,
                steps_present=0, lossless=0, budget_bits=12, margin_bits=0, prior_kind=1, seed=0, pixel_crc=0,
                payload_bytes=0)
    for flag in (0, 1):
        data = container.pack(container.Header(**base, windowed=flag), b"")
        assert container.unpack(data, b"\1\2\3\4", 8).header.windowed == flag
    bad = bytearray(container.pack(container.Header(**base), b""))
    bad[2] |= 0x80  # the learned-layer flag on a lossy file
    with pytest.raises(Exception, match="unknown flags"):
        container.unpack(bytes(bad))
    with pytest.raises(Exception, match="unknown flags"):
        container.unpack(container.pack(container.Header(**{**base, "mode": 1, "lossless": 1}, windowed=1), b""))
