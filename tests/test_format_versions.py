"""Files of format versions 4 (ddpmcodec 0.3: independent PFR candidates, chunk budget 12 by default), 5
(ddpmcodec 0.4: sliding-window candidates) and 6 (ddpmcodec 0.5: stop schedules) still decode exactly as those
releases decoded them; new files are version 7 (lossy files checked by the coder's end state), or 8 with --portable
(the network on integer grids: its fixture must decode exactly on every machine)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.stop_points import truncate
from ddpmcodec.container import header as container
from ddpmcodec.errors import DeterminismError
from ddpmcodec.images import psnr
from ddpmcodec.network.model_io import load_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def bundled():
    return load_model()


# Files written by earlier releases (bundled model, defaults, from tests/data/v4_source.png), with what those
# releases measured: (file, version, default chunk budget, bytes of the t = 99 preview, its PSNR in dB).
OLD_FILES = [("v4_default.ddpm", 4, 12, 169, 20.7796),  # ddpmcodec 0.3.0: independent candidates
             ("v5_default.ddpm", 5, 18, 166, 20.7133)]  # ddpmcodec 0.4.0: sliding-window candidates
# DiffusionModel.numerics_digest() of the bundled model on the machines that wrote these files (x86-64 CPU, torch
# 2.13.0+cpu). Their lossless end needs the encoder's network numerics: a machine with another digest (measured: an
# H200 machine's CPU with torch 2.11.0) must refuse it with the checksum error, never return other pixels.
ENCODER_NUMERICS_DIGEST = "fb260ad452c9b447"


@pytest.fixture(scope="module")
def same_numerics(bundled):
    return bundled.numerics_digest() == ENCODER_NUMERICS_DIGEST


@pytest.mark.parametrize("name, version, budget, preview_bytes, preview_db", OLD_FILES)
def test_old_version_file_decodes_as_before(bundled, same_numerics, name, version, budget, preview_bytes,
                                            preview_db):
    data = (DATA / name).read_bytes()
    img = np.asarray(Image.open(DATA / "v4_source.png"))
    parsed = container.unpack(data)
    assert data[0] == 0xD0 | version and parsed.header.version == version and parsed.header.budget_bits == budget
    preview = list(decode_progressive(data, bundled, stop_at_t=99, every_step=False))[-1]
    assert preview.t == 99 and preview.bytes_read == preview_bytes
    assert psnr(preview.pixels, img) == pytest.approx(preview_db, abs=1e-3)
    if same_numerics:
        exact = list(decode_progressive(data, bundled, every_step=False))[-1]
        assert exact.t == 0 and np.array_equal(exact.pixels, img)
    else:
        with pytest.raises(DeterminismError, match="checksum"):
            list(decode_progressive(data, bundled, every_step=False))
    cut = truncate(data, bundled, stop_at_t=99)  # a prefix of an old file stays a file of that version
    assert cut[0] == 0xD0 | version and len(cut) == preview_bytes
    assert np.array_equal(list(decode_progressive(cut, bundled, every_step=False))[-1].pixels, preview.pixels)


def test_v6_stop_schedule_file_decodes_as_before(bundled):
    """A version-6 lossy file (ddpmcodec 0.5.0, `encode --stop-at t=200`: 12 steps to t = 194, header check field,
    empty-stack start) keeps decoding, and truncating it keeps version 6."""
    data = (DATA / "v6_stop200.ddpm").read_bytes()
    img = np.asarray(Image.open(DATA / "v4_source.png"))
    parsed = container.unpack(data)
    assert data[0] == 0xD6 and len(data) == 82 and parsed.header_bytes == 8
    assert (parsed.header.n_steps, parsed.header.t_end, parsed.header.steps_present) == (12, 194, 12)
    out = list(decode_progressive(data, bundled, every_step=False))[-1]
    assert out.t == 194 and psnr(out.pixels, img) == pytest.approx(17.8862, abs=1e-3)
    cut = truncate(data, bundled, stop_at_t=300)
    assert cut[0] == 0xD6 and len(cut) < len(data)
    assert list(decode_progressive(cut, bundled, every_step=False))[-1].t > 194


def test_new_files_are_version_7_with_the_compact_default_header(bundled):
    img = np.asarray(Image.open(DATA / "v4_source.png"))
    res = encode(img, bundled, CodecSettings(n_steps=3), stop_at_t=600)
    assert res.data[0] == 0xD7 and res.header.version == 7 and res.header.budget_bits == 18
    default_header = container.Header(**{**res.header.__dict__, "n_steps": 50})
    assert len(default_header.pack_body()) < len(res.header.pack_body())  # n_steps 3 is not a default: stored
    assert container.unpack(res.data).header.budget_bits == 18  # the version-5 default, read back
    own = encode(img, bundled, CodecSettings(), stop_at_t=200)  # the same image and stop as the version-6 file
    assert own.header.stop_schedule_code() is not None and container.unpack(own.data).header_bytes == 4
    assert len(own.data) < len((DATA / "v6_stop200.ddpm").read_bytes())


def test_portable_version_8_file_decodes_exactly_on_every_machine(bundled):
    """A --portable file (format 8, bundled model, defaults, from v4_source.png, written by this build): its network
    runs on integer grids, so its lossless end needs no numerics digest: exact pixels everywhere."""
    data = (DATA / "v8_portable.ddpm").read_bytes()
    h = container.unpack(data).header
    assert (h.version, h.exact_network, h.lossless) == (8, 1, 1)
    source = np.asarray(Image.open(DATA / "v4_source.png").convert("RGB"))
    out = list(decode_progressive(data, bundled, every_step=False))[-1]
    assert out.t == 0 and np.array_equal(out.pixels, source)
