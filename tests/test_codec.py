"""Progressive codec round trips with a tiny random model: exactness, prefixes, truncation, error paths."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from ddpmcodec.container import header as container
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.decoding import StreamReader, decode_progressive
from ddpmcodec.errors import CodecError, DeterminismError, FormatError, ModelMismatchError
from ddpmcodec.codec.stop_points import step_table, truncate
from ddpmcodec.testing import make_tiny_model, smooth_image

FAST = CodecSettings(n_steps=12, budget_bits=6, margin_bits=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m"), resolution=8, seed=0)


@pytest.fixture(scope="module")
def coded(model):
    img = smooth_image(11, 13)
    return img, encode(img, model, FAST)


@pytest.mark.parametrize("shape", [(8, 8), (11, 13), (1, 1), (5, 17)])
def test_lossless_round_trip(model, shape):
    img = smooth_image(*shape, seed=sum(shape))
    res = encode(img, model, FAST)
    out = list(decode_progressive(res.data, model, every_step=False))
    assert len(out) == 1 and out[0].t == 0 and out[0].bytes_read == len(res.data)
    np.testing.assert_array_equal(out[0].pixels, img)
    assert res.steps[-1].bytes_if_stopped == len(res.data)


def test_settings_variants_round_trip(model):
    img = smooth_image(8, 16, seed=3)
    for s in (CodecSettings(n_steps=6, t_end=4, budget_bits=4, margin_bits=3, prior="fixedlarge", seed=7),
              CodecSettings(n_steps=3, budget_bits=10, margin_bits=0)):
        res = encode(img, model, s)
        np.testing.assert_array_equal(list(decode_progressive(res.data, model))[-1].pixels, img)


def test_progressive_outputs_match_encoder_psnr(model, coded):
    img, res = coded
    steps = list(decode_progressive(res.data, model))
    assert [s.t for s in steps] == [s.t for s in res.steps]
    assert [s.bytes_read for s in steps] == [s.bytes_if_stopped for s in res.steps]
    from ddpmcodec.images import psnr

    for dec, enc in zip(steps[:-1], res.steps[:-1]):
        assert psnr(dec.pixels, img) == pytest.approx(enc.psnr, abs=1e-6)
    assert all(np.diff([s.bytes_read for s in steps]) >= 0)


def test_every_prefix_decodes_verified_intermediates_only(model, coded):
    """A partial download decodes at least to the step its table entry names (raw_bytes, rounded up to the next
    checked block), every frame equal to the full decode's frame at that t, and never past its verified blocks."""
    img, res = coded
    full = {s.t: s.pixels for s in decode_progressive(res.data, model)}
    parsed, table = step_table(res.data, model)
    ts = [e.t for e in table]
    for k, entry in enumerate(table[:-1]):
        assert entry.bytes == res.steps[k].bytes_if_stopped
        out = list(decode_progressive(res.data[:entry.raw_bytes], model))  # a partial download
        assert out[-1].t <= entry.t == res.steps[k].t
        for step in out:
            np.testing.assert_array_equal(step.pixels, full[step.t])
    for cut in range(0, len(res.data), 7):  # arbitrary cuts: verified frames only, or a clean error
        if cut < table[0].raw_bytes:  # no complete checked block: nothing can be verified
            with pytest.raises(FormatError):
                list(decode_progressive(res.data[:cut], model, every_step=False))
            continue
        out = list(decode_progressive(res.data[:cut], model, every_step=False))
        assert out[-1].t in ts[:-1]
        np.testing.assert_array_equal(out[-1].pixels, full[out[-1].t])


def test_truncate_then_decode(model, coded):
    img, res = coded
    full = list(decode_progressive(res.data, model))
    k = 5
    small = truncate(res.data, model, stop_at_t=res.steps[k].t)
    assert len(small) == res.steps[k].bytes_if_stopped
    parsed = container.unpack(small)
    assert parsed.complete and parsed.header.steps_present == k and not parsed.header.lossless
    out = list(decode_progressive(small, model))
    assert out[-1].t == res.steps[k].t
    np.testing.assert_array_equal(out[-1].pixels, full[k].pixels)
    by_bytes = truncate(res.data, model, stop_at_bytes=res.steps[k].bytes_if_stopped + 3)
    assert by_bytes == small
    _, table = step_table(small, model)
    assert [e.t for e in table] == [s.t for s in res.steps[: k + 1]]


def test_encoder_stop_at_matches_full_prefix(model, coded):
    img, res = coded
    t_stop = res.steps[4].t
    lossy = encode(img, model, FAST, stop_at_t=t_stop)
    out = list(decode_progressive(lossy.data, model, every_step=False))
    full = list(decode_progressive(res.data, model, stop_at_t=t_stop, every_step=False))
    assert out[-1].t == full[-1].t == t_stop
    np.testing.assert_array_equal(out[-1].pixels, full[-1].pixels)
    assert len(lossy.data) < len(res.data) and lossy.steps[-1].bytes_if_stopped == len(lossy.data)
    assert truncate(res.data, model, stop_at_t=t_stop) == lossy.data  # byte for byte, fresh stack in both


def test_truncating_a_partial_download_compacts_it(model, coded):
    img, res = coded
    parsed, table = step_table(res.data, model)
    k = max(i for i, e in enumerate(table) if e.raw_bytes < len(res.data))  # a prefix that is really partial
    partial = res.data[:table[k].raw_bytes]
    reached = list(decode_progressive(partial, model))[-1]
    j = next(i for i, e in enumerate(table) if e.t == reached.t)
    assert j >= k and table[j].bytes < table[k].raw_bytes  # no leftover coder state from the steps that were cut
    small = truncate(partial, model)
    assert len(small) == table[j].bytes and container.unpack(small).complete
    assert small == truncate(res.data, model, stop_at_t=reached.t)
    np.testing.assert_array_equal(list(decode_progressive(small, model))[-1].pixels, reached.pixels)


def test_wrong_model_is_refused(tmp_path, coded):
    other = make_tiny_model(tmp_path, resolution=8, seed=1)
    with pytest.raises(ModelMismatchError):
        list(decode_progressive(coded[1].data, other))


def test_corrupt_and_wrong_version_files(model, coded):
    data = bytearray(coded[1].data)
    data[-3] ^= 0x10
    with pytest.raises(FormatError, match="check failed"):
        list(decode_progressive(bytes(data), model))
    bad = bytearray(coded[1].data)
    bad[0] = 0xD9
    with pytest.raises(FormatError, match="version 9"):
        list(decode_progressive(bytes(bad), model))
    with pytest.raises(FormatError, match="version-2 .ddpm file"):
        list(decode_progressive(b"DDP\x02" + bytes(40), model))
    with pytest.raises(FormatError, match="not a .ddpm file"):
        list(decode_progressive(b"\x89PNG\r\n\x1a\n" + bytes(40), model))
    with pytest.raises(FormatError, match="truncated"):
        list(decode_progressive(coded[1].data[:5], model))


def test_any_damage_to_a_lossy_file_fails_its_end_state_before_the_network(model, coded):
    """Version-7 lossy files carry their whole-file check in the rANS stack's bottom state: every flipped bit, cut,
    dropped or appended byte is refused when the file is opened (no network run), or, for a byte of the header's
    first three, by the format, tag or flag checks."""
    img, res = coded
    small = truncate(res.data, model, stop_at_t=res.steps[6].t)
    parsed = container.unpack(small, StreamReader(small, model).parsed.header.model_id, 8)
    assert parsed.header.end_checked() and parsed.header.implicit_length() and parsed.end_state
    mutants = [small[:n] for n in range(1, len(small))] + [small + b"\0", small + b"\x01"]
    mutants += [small[:i] + small[i + 1:] for i in range(len(small))]
    for i in range(len(small)):
        for bit in (0x01, 0x10, 0x80):
            mutants.append(small[:i] + bytes([small[i] ^ bit]) + small[i + 1:])
    refused = 0
    for bad in mutants:
        try:
            StreamReader(bad, model)
        except CodecError:
            refused += 1
            continue
        out = list(decode_progressive(bad, model))  # opened: it must be the original (a 2^-16 chance per mutant)
        np.testing.assert_array_equal(out[-1].pixels, list(decode_progressive(small, model))[-1].pixels)
    assert refused == len(mutants)


def test_determinism_failure_is_reported(model, coded):
    parsed = StreamReader(coded[1].data, model).parsed
    h = parsed.header
    h.pixel_crc ^= 1  # as if this machine reproduced different pixels
    tampered = container.pack(h, parsed.payload)
    with pytest.raises(DeterminismError):
        list(decode_progressive(tampered, model))


def test_pixel_crc_is_of_the_original(coded):
    img, res = coded
    assert container.unpack(res.data).header.pixel_crc == zlib.crc32(img.tobytes()) & 0xFFFF


def test_float_drift_is_graceful_for_lossy_and_loud_for_lossless(model, coded, monkeypatch):
    """A decoder whose network differs in the last digits still rebuilds nearly the same x_t (PFR indices do not
    depend on network outputs); the exact x_0 layer either reproduces the pixels or fails the check."""
    from ddpmcodec.images import psnr

    img, res = coded
    clean = list(decode_progressive(res.data, model, stop_at_t=res.steps[-3].t, every_step=False))[-1]
    original_eps = type(model).eps
    g = __import__("torch").Generator().manual_seed(0)

    def drifting_eps(self, x, t):
        out = original_eps(self, x, t)
        return out + 1e-4 * __import__("torch").randn(out.shape, generator=g)

    monkeypatch.setattr(type(model), "eps", drifting_eps)
    drifted = list(decode_progressive(res.data, model, stop_at_t=res.steps[-3].t, every_step=False))[-1]
    assert drifted.t == clean.t
    assert psnr(drifted.pixels, clean.pixels) > 35
    try:
        out = list(decode_progressive(res.data, model, every_step=False))[-1]
        np.testing.assert_array_equal(out.pixels, img)  # survived the drift exactly
    except DeterminismError:
        pass


def test_decode_progressive_yields_t_bytes_pixels_tuples(model, coded):
    img, res = coded
    for t, bytes_read, pixels in decode_progressive(res.data, model, stop_at_t=res.steps[2].t):
        assert pixels.shape == img.shape and pixels.dtype == np.uint8 and bytes_read <= len(res.data)
    assert t == res.steps[2].t


def test_lossless_decode_does_not_depend_on_the_thread_count(tmp_path):
    """Files written on a machine with more cores must decode exactly with fewer (network outputs are evaluated
    with a fixed thread count); the bundled 32x32 model is big enough for thread count to change conv results."""
    import torch

    from ddpmcodec.network.model_io import load_model

    model = load_model("default")
    img = smooth_image(32, 32, seed=5)
    settings = CodecSettings(n_steps=4, budget_bits=6, t_end=200)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        data = encode(img, model, settings).data
        torch.set_num_threads(1)
        out = list(decode_progressive(data, model, every_step=False))[-1]
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(out.pixels, img)
    assert torch.get_num_threads() == before


def test_reproducible_eps_is_the_same_for_any_worker_count():
    """Multi-tile images run fixed groups of tiles on parallel one-thread workers: the outputs must not depend on
    how many workers the machine offers (the bundled model is big enough for thread count to change conv sums)."""
    import torch

    from ddpmcodec.network.model_io import REPRODUCIBLE_GROUP, load_model

    model = load_model("default")
    x = torch.randn(2 * REPRODUCIBLE_GROUP + 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            outs.append(model.eps_reproducible(x, 37))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])
    by_group = torch.cat([model.eps_reproducible(x[i:i + REPRODUCIBLE_GROUP], 37)
                          for i in range(0, len(x), REPRODUCIBLE_GROUP)])
    assert torch.equal(outs[0], by_group)
