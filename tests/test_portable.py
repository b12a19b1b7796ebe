"""Portable files (--portable, format 8): the U-Net on integer grids gives the same numbers on every machine."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.container import header as container
from ddpmcodec.diffusion import net_timestep
from ddpmcodec.errors import FormatError
from ddpmcodec.network.exact_unet import GridUNet
from ddpmcodec.testing import make_tiny_model, smooth_image

FAST = CodecSettings(n_steps=6, budget_bits=6, exact_network=True)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("portable")
    make_tiny_model(folder, resolution=8, seed=0)
    return folder / "tiny-r8-s0.safetensors"


@pytest.fixture(scope="module")
def model(model_path):
    from ddpmcodec.network.model_io import load_model

    return load_model(model_path)


def test_grid_outputs_do_not_depend_on_batch_or_threads(model):
    grid = GridUNet(model.net)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = net_timestep(37, 5)
    together = grid(x, steps)
    alone = torch.cat([grid(x[i:i + 1], steps[i:i + 1]) for i in range(5)])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = grid(x.flip(0), steps)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(together, alone) and torch.equal(together, threaded.flip(0))
    with torch.inference_mode():
        assert (together - model.net(x, steps)).abs().max() < 1e-3  # the float network, to the grids' precision
    assert grid.max_partial < 2.0 ** 51


def test_portable_files_are_version_8_and_round_trip(model):
    images = [smooth_image(8, 8, seed=4), smooth_image(10, 12, seed=5)]
    for im in images:
        res = encode(im, model, FAST)
        h = container.unpack(res.data).header
        assert res.header.version == h.version == 8 and h.exact_network == 1
        out = list(decode_progressive(res.data, model, every_step=False))[-1]
        assert out.t == 0 and np.array_equal(out.pixels, im)
        lossy = encode(im, model, FAST, stop_at_t=300)
        assert container.unpack(lossy.data).header.exact_network == 1
        assert list(decode_progressive(lossy.data, model, every_step=False))[-1].t > 0
    plain = encode(images[0], model, CodecSettings(n_steps=6, budget_bits=6))
    assert plain.header.version == container.VERSION == 7  # other files keep format 7


def test_version_8_headers_are_checked(model):
    data = encode(smooth_image(8, 8, seed=4), model, FAST).data
    h = container.unpack(data).header
    assert h.exact_network == 1
    assert not container.Header(**{**h.__dict__, "version": 7}).exact_network  # the version alone says it
    assert container.version_for(True) == 8 and container.version_for(False) == container.VERSION == 7
    plain = encode(smooth_image(8, 8, seed=4), model, CodecSettings(n_steps=6, budget_bits=6))
    assert len(data) - len(plain.data) in range(-8, 9)  # no extra header byte: the version says it
    assert container.unpack(data).header_bytes == container.unpack(plain.data).header_bytes
    for original, flipped_to in ((data, 0xD7), (plain.data, 0xD8)):  # the version byte is covered by the checks
        forged = bytes([flipped_to]) + original[1:]
        with pytest.raises(FormatError):
            list(decode_progressive(forged, model, every_step=False))


def test_a_portable_file_decodes_exactly_with_other_cpu_kernels(model, model_path, tmp_path):
    """The decoder runs in a fresh process with torch's generic CPU kernels (not this machine's vector units). On
    this project's AVX-512 machine the same image's float-network file (no --portable) fails the checksum there."""
    im = smooth_image(8, 8, seed=3)
    path = tmp_path / "p.ddpm"
    path.write_bytes(encode(im, model, FAST).data)
    np.save(tmp_path / "p.npy", im)
    script = ("import sys, numpy as np; from ddpmcodec.network.model_io import load_model; "
              "from ddpmcodec.codec.decoding import decode_progressive; m = load_model(sys.argv[1]); "
              "out = list(decode_progressive(open(sys.argv[2], 'rb').read(), m, every_step=False))[-1]; "
              "print('exact' if out.t == 0 and np.array_equal(out.pixels, np.load(sys.argv[3])) else 'wrong')")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    proc = subprocess.run([sys.executable, "-c", script, str(model_path), str(path), str(tmp_path / "p.npy")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "exact", proc.stderr[-500:]


def test_cli_portable_and_info(model_path, tmp_path):
    src = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(smooth_image(8, 8, seed=7)).save(src)
    model_path = str(model_path)
    runner = CliRunner()
    out = tmp_path / "a.ddpm"
    res = runner.invoke(main, ["encode", str(src), "-o", str(out), "--model", model_path, "--steps", "6",
                               "--budget", "6", "--portable", "-q"])
    assert res.exit_code == 0, res.output
    info = runner.invoke(main, ["info", str(out), "--model", model_path])
    assert info.exit_code == 0 and "integer grids" in info.output and "v8" in info.output
    bb = tmp_path / "b.ddpm"
    res = runner.invoke(main, ["encode", str(src), "-o", str(bb), "--model", model_path, "--mode", "bitsback",
                               "--steps", "6", "--portable", "-q"])
    assert res.exit_code == 0, res.output
    assert container.unpack(bb.read_bytes()).header.version == 8
    dec = runner.invoke(main, ["decode", str(bb), "-o", str(tmp_path / "b.png"), "--model", model_path, "-q"])
    assert dec.exit_code == 0, dec.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png").convert("RGB")), smooth_image(8, 8, seed=7))


def test_portable_bits_back_sets_round_trip(model):
    from ddpmcodec.bitsback.codec import BitsBackSettings, decode_images, encode_set

    images = [smooth_image(8, 8, seed=8), smooth_image(9, 7, seed=9)]
    res = encode_set(images, model, BitsBackSettings(n_steps=6, exact_network=True))
    h = container.unpack(res.data).header
    assert (h.version, h.exact_network, h.mode) == (8, 1, container.MODE_BITSBACK)
    out = decode_images(res.data, model)
    assert all(np.array_equal(a, b) for a, b in zip(out.images, images))


def test_a_model_outside_the_grids_range_is_a_clear_error(model):
    from ddpmcodec.errors import InputError

    grid = GridUNet(model.net)
    x = torch.full((1, 3, 8, 8), 1e6)  # far outside [-1, 1]: activations beyond the exact range
    with pytest.raises(InputError, match="--portable"):
        grid(x, net_timestep(5, 1))
