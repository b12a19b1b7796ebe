"""`ddpmcodec encode/decode/info/truncate` end to end with a tiny model file; every error is one line, exit 1."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from ddpmcodec.testing import make_tiny_model

FAST = ["--steps", "8", "--budget", "6", "--margin", "2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    make_tiny_model(d, resolution=8, seed=0)
    model = str(d / "tiny-r8-s0.safetensors")
    make_tiny_model(d, resolution=8, seed=1)
    rng = np.random.default_rng(0)
    rgb = np.clip(np.cumsum(rng.integers(-8, 9, (10, 12, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "img.png")
    Image.fromarray(rgb[:, :, 0]).save(d / "gray.png")
    return d, model, rgb


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def one_line_error(res):
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output


def test_encode_decode_lossless_and_info(env):
    d, model, rgb = env
    run("encode", d / "img.png", "--model", model, *FAST, "-q")
    assert (d / "img.ddpm").is_file()
    run("decode", d / "img.ddpm", "-o", d / "back.png", "--model", model, "-q")
    np.testing.assert_array_equal(np.asarray(Image.open(d / "back.png")), rgb)
    info = run("info", d / "img.ddpm", "--model", model).output
    assert "10x12" not in info and "12x10 RGB" in info and "lossless" in info
    assert info.strip().splitlines()[-1].split()[1] == "0"  # last stop point is the exact image
    header_only = run("info", d / "img.ddpm", "--no-steps").output
    assert "step" not in header_only.splitlines()[-1]
    Image.fromarray(rgb[:8, :8]).save(d / "one_tile.png")  # one tile: its size comes with the model, not the file
    run("encode", d / "one_tile.png", "--model", model, *FAST, "--stop-at", "t=40", "-q")
    one_tile = run("info", d / "one_tile.ddpm", "--no-steps").output
    assert "one tile of the model" in one_tile and "coder's end state" in one_tile and "v7" in one_tile
    assert "8x8 RGB" in run("info", d / "one_tile.ddpm", "--model", model).output


def test_refuses_to_overwrite_without_force(env):
    d, model, _ = env
    target = d / "keep.ddpm"
    target.write_bytes(b"precious")
    one_line_error(run("encode", d / "img.png", "-o", target, "--model", model, *FAST, ok=False))
    assert target.read_bytes() == b"precious"
    run("encode", d / "img.png", "-o", target, "--model", model, *FAST, "-f", "-q")
    from ddpmcodec.container import header as container

    assert container.unpack(target.read_bytes()).complete  # a valid .ddpm file replaced the old bytes


def test_grayscale_round_trip(env):
    d, model, rgb = env
    run("encode", d / "gray.png", "-o", d / "gray.ddpm", "--model", model, *FAST, "-q")
    run("decode", d / "gray.ddpm", "-o", d / "gray_back.png", "--model", model, "-q")
    back = Image.open(d / "gray_back.png")
    assert back.mode == "L"
    np.testing.assert_array_equal(np.asarray(back), rgb[:, :, 0])


def test_stop_at_truncate_and_frames(env):
    d, model, _ = env
    run("encode", d / "img.png", "-o", d / "p.ddpm", "--model", model, *FAST, "-q", "-f")
    full = (d / "p.ddpm").read_bytes()
    run("truncate", d / "p.ddpm", "--stop-at", "t=50", "-o", d / "p50.ddpm", "--model", model)
    small = (d / "p50.ddpm").read_bytes()
    assert len(small) < len(full)
    run("decode", d / "p50.ddpm", "-o", d / "p50.png", "--model", model, "-q")
    run("decode", d / "p.ddpm", "--stop-at", "t=50", "-o", d / "p50b.png", "--model", model, "-q")
    np.testing.assert_array_equal(np.asarray(Image.open(d / "p50.png")), np.asarray(Image.open(d / "p50b.png")))
    run("decode", d / "p.ddpm", "--frames", d / "frames", "-o", d / "pf.png", "--model", model, "-q")
    names = sorted(p.name for p in (d / "frames").iterdir())
    assert "strip.png" in names and "animation.png" in names and len(names) >= 4
    run("encode", d / "img.png", "-o", d / "lossy.ddpm", "--stop-at", "t=50", "--model", model, *FAST, "-q")
    assert len((d / "lossy.ddpm").read_bytes()) < len(full)
    res = run("encode", d / "img.png", "-o", d / "bpp.ddpm", "--target-bpp", "3", "--model", model, *FAST)
    assert len((d / "bpp.ddpm").read_bytes()) * 8 / 120 <= 3
    assert "lossy" in res.output


def test_truncate_repairs_a_partial_download_and_refuses_a_no_op(env):
    d, model, _ = env
    run("encode", d / "img.png", "-o", d / "dl.ddpm", "--model", model, *FAST, "-q", "-f")
    full = (d / "dl.ddpm").read_bytes()
    cut = 2 * len(full) // 3  # holds the first checked block (256 payload bytes)
    (d / "part.ddpm").write_bytes(full[:cut])
    run("truncate", d / "part.ddpm", "-o", d / "fixed.ddpm", "--model", model)
    assert "PARTIAL" not in run("info", d / "fixed.ddpm", "--model", model).output
    assert len((d / "fixed.ddpm").read_bytes()) < cut
    (d / "short.ddpm").write_bytes(full[:100])  # no checked block: nothing to verify, so nothing is blessed
    one_line_error(run("truncate", d / "short.ddpm", "-o", d / "short_fixed.ddpm", "--model", model, ok=False))
    assert not (d / "short_fixed.ddpm").exists()
    one_line_error(run("truncate", d / "dl.ddpm", "-o", d / "same.ddpm", "--model", model, ok=False))
    assert not (d / "same.ddpm").exists()
    one_line_error(run("decode", d / "dl.ddpm", "--stop-at", "bytes=5", "-o", d / "tiny.png", "--model", model,
                       ok=False))
    assert not (d / "tiny.png").exists()


def test_bad_inputs_give_one_line_errors(env, tmp_path):
    d, model, _ = env
    (tmp_path / "notimage.png").write_bytes(b"hello, not an image")
    one_line_error(run("encode", tmp_path / "notimage.png", "--model", model, ok=False))
    one_line_error(run("encode", tmp_path / "missing.png", "--model", model, ok=False))
    one_line_error(run("decode", d / "img.png", "-o", tmp_path / "x.png", "--model", model, ok=False))
    assert not (tmp_path / "x.png").exists()
    run("encode", d / "img.png", "-o", tmp_path / "a.ddpm", "--model", model, *FAST, "-q")
    data = (tmp_path / "a.ddpm").read_bytes()
    (tmp_path / "corrupt.ddpm").write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
    one_line_error(run("decode", tmp_path / "corrupt.ddpm", "-o", tmp_path / "c.png", "--model", model, ok=False))
    (tmp_path / "hdr.ddpm").write_bytes(data[:9])
    one_line_error(run("decode", tmp_path / "hdr.ddpm", "-o", tmp_path / "h.png", "--model", model, ok=False))
    (tmp_path / "v9.ddpm").write_bytes(data[:3] + b"\x09" + data[4:])
    one_line_error(run("info", tmp_path / "v9.ddpm", ok=False))
    other = str(d / "tiny-r8-s1.safetensors")
    one_line_error(run("decode", tmp_path / "a.ddpm", "-o", tmp_path / "w.png", "--model", other, ok=False))
    one_line_error(run("decode", tmp_path / "a.ddpm", "-o", tmp_path / "w.png", "--model", "nope.ckpt", ok=False))
    one_line_error(run("decode", tmp_path / "a.ddpm", "--stop-at", "q=3", "--model", model, ok=False))
    for name in ("c.png", "h.png", "w.png"):
        assert not (tmp_path / name).exists()
    rgba = np.zeros((4, 4, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    one_line_error(run("encode", tmp_path / "alpha.png", "--model", model, ok=False))
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    one_line_error(run("encode", tmp_path / "deep.png", "--model", model, ok=False))


def test_partial_file_decodes_what_it_holds(env, tmp_path):
    d, model, _ = env
    run("encode", d / "img.png", "-o", tmp_path / "a.ddpm", "--model", model, *FAST, "-q")
    data = (tmp_path / "a.ddpm").read_bytes()
    (tmp_path / "half.ddpm").write_bytes(data[: len(data) // 2])
    res = run("decode", tmp_path / "half.ddpm", "-o", tmp_path / "half.png", "--model", model, "--allow-partial")
    assert "partial" in res.output and (tmp_path / "half.png").is_file()


def test_info_on_a_bitsback_file(env, tmp_path):
    d, model, _ = env
    run("encode", d / "img.png", "-o", tmp_path / "bb.ddpm", "--mode", "bitsback", "--steps", "6", "--model", model,
        "-q")
    out = run("info", tmp_path / "bb.ddpm", "--model", model).output
    assert "bits-back" in out and "12x10" in out and "PFR" not in out
    assert "bits-back" in run("info", tmp_path / "bb.ddpm", "--no-steps").output  # unverified, without a model
    one_line_error(run("info", tmp_path / "bb.ddpm", ok=False))  # the default model did not encode it
