"""Files of format versions 4 (ddpmcodec 0.3: independent PFR candidates, chunk budget 12 by default) and 5
(ddpmcodec 0.4: sliding-window candidates) still decode exactly as those releases decoded them; new files are
version 6."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.stop_points import truncate
from ddpmcodec.container import header as container
from ddpmcodec.images import psnr
from ddpmcodec.network.model_io import load_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def bundled():
    return load_model()


def test_version_4_file_decodes_as_before(bundled):
    """tests/data/v4_default.ddpm was written by the version-4 encoder (ddpmcodec 0.3.0, bundled model, defaults)
    from tests/data/v4_source.png; its t = 99 preview measured 20.7796 dB there."""
    data = (DATA / "v4_default.ddpm").read_bytes()
    img = np.asarray(Image.open(DATA / "v4_source.png"))
    parsed = container.unpack(data)
    assert data[0] == 0xD4 and parsed.header.version == 4 and parsed.header.budget_bits == 12
    preview = list(decode_progressive(data, bundled, stop_at_t=99, every_step=False))[-1]
    assert preview.t == 99 and preview.bytes_read == 169
    assert psnr(preview.pixels, img) == pytest.approx(20.7796, abs=1e-3)
    exact = list(decode_progressive(data, bundled, every_step=False))[-1]
    assert exact.t == 0 and np.array_equal(exact.pixels, img)
    cut = truncate(data, bundled, stop_at_t=99)  # a prefix of a version-4 file stays a version-4 file
    assert cut[0] == 0xD4 and len(cut) == 169
    assert np.array_equal(list(decode_progressive(cut, bundled, every_step=False))[-1].pixels, preview.pixels)


def test_version_5_file_decodes_as_before(bundled):
    """tests/data/v5_default.ddpm was written by the version-5 encoder (ddpmcodec 0.4.0, bundled model, defaults)
    from tests/data/v4_source.png; its t = 99 preview measured 20.7133 dB there."""
    data = (DATA / "v5_default.ddpm").read_bytes()
    img = np.asarray(Image.open(DATA / "v4_source.png"))
    parsed = container.unpack(data)
    assert data[0] == 0xD5 and parsed.header.version == 5 and parsed.header.budget_bits == 18
    preview = list(decode_progressive(data, bundled, stop_at_t=99, every_step=False))[-1]
    assert preview.t == 99 and preview.bytes_read == 166
    assert psnr(preview.pixels, img) == pytest.approx(20.7133, abs=1e-3)
    exact = list(decode_progressive(data, bundled, every_step=False))[-1]
    assert exact.t == 0 and np.array_equal(exact.pixels, img)
    cut = truncate(data, bundled, stop_at_t=99)
    assert cut[0] == 0xD5 and len(cut) == 166
    assert np.array_equal(list(decode_progressive(cut, bundled, every_step=False))[-1].pixels, preview.pixels)


def test_new_files_are_version_6_with_the_compact_default_header(bundled):
    img = np.asarray(Image.open(DATA / "v4_source.png"))
    res = encode(img, bundled, CodecSettings(n_steps=3), stop_at_t=600)
    assert res.data[0] == 0xD6 and res.header.version == 6 and res.header.budget_bits == 18
    default_header = container.Header(**{**res.header.__dict__, "n_steps": 50})
    assert len(default_header.pack_body()) < len(res.header.pack_body())  # n_steps 3 is not a default: stored
    assert container.unpack(res.data).header.budget_bits == 18  # the version-5 default, read back
