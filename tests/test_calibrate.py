"""`ddpmcodec calibrate`: a profile measured on images, stored in the model, used by the codec."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from ddpmcodec.codec.progressive import CodecSettings, codec_model_id, encode
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.network.model_io import load_model
from ddpmcodec.schedule.steps import equal_kl_schedule, fallback_profile, profile_for
from ddpmcodec.testing import make_tiny_model
from ddpmcodec.diffusion import Schedule


def test_calibrate_writes_a_profile_the_codec_uses(tmp_path):
    model = make_tiny_model(tmp_path, resolution=8, seed=0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "calibrated.safetensors"
    res = CliRunner().invoke(main, ["calibrate", "--model", str(tmp_path / "tiny-r8-s0.safetensors"),
                                    "--data", str(folder), "--limit", "3", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    cal = load_model(str(out))
    assert cal.identity == model.identity  # weights untouched
    prof = profile_for(cal)
    assert prof.source.startswith("calibrated:") and len(prof.mse_x0) == 1001
    assert np.all(prof.mse_x0[1:] > 0) and prof.mse_x0[1] < prof.mse_x0[1000]
    assert profile_for(model).source == "fallback"
    assert codec_model_id(cal, prof) != codec_model_id(model, fallback_profile(Schedule(model.diffusion)))
    assert equal_kl_schedule(prof, 10, 1) != equal_kl_schedule(profile_for(model), 10, 1)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    data = encode(img, cal, CodecSettings(n_steps=6, budget_bits=6)).data
    np.testing.assert_array_equal(list(decode_progressive(data, cal))[-1].pixels, img)
    again = CliRunner().invoke(main, ["calibrate", "--model", str(out), "--data", str(folder), "-o", str(out)])
    assert again.exit_code == 1 and "exists" in again.output
