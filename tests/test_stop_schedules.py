"""Lossy files with a schedule of their own (format version 6): the one-byte header form, the encoder's rule, round
trips with tiny random models, truncation, --target-bpp and the CLI option."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.stop_points import encode_within_bpp, step_table, summary_lines, truncate
from ddpmcodec.container import header as container
from ddpmcodec.errors import FormatError, InputError
from ddpmcodec.schedule import stop_schedules

MID = b"\x01\x02\x03\x04"


def header(**kw) -> container.Header:
    base = dict(mode=0, model_id=MID, width=32, height=32, source_mode=0, tile=32, steps_present=3, lossless=0,
                prior_kind=1, pixel_crc=0, payload_bytes=12, **container.DEFAULTS)
    base.update(kw)
    return container.Header(**base)


def test_grids_are_what_the_byte_can_name():
    grid = container.STOP_GRID
    assert len(grid) == 64 and list(grid) == sorted(set(grid)) and grid[0] >= 1 and grid[-1] < 1000
    assert len(container.STOP_STEP_COUNTS) == 4 and container.DEFAULTS["n_steps"] not in container.STOP_STEP_COUNTS


@pytest.mark.parametrize("n_steps", container.STOP_STEP_COUNTS)
@pytest.mark.parametrize("t_end", container.STOP_GRID[::7] + container.STOP_GRID[-1:])
def test_a_stop_schedule_costs_one_header_byte_and_round_trips(n_steps, t_end):
    plain = container.pack(header(), bytes(12))
    own = header(n_steps=n_steps, t_end=t_end)
    data = container.pack(own, bytes(12))
    assert len(data) == len(plain) + 1
    assert data[2] & 0x80 and not data[2] & 0x10  # the stop-schedule flag, not the custom-settings flag
    parsed = container.unpack(data, MID, 32)
    assert parsed.header == own and parsed.complete
    assert container.unpack(data).header.t_end == t_end  # readable without the model too


@pytest.mark.parametrize("n_steps", container.STOP_STEP_COUNTS)
def test_a_whole_stop_schedule_file_stores_no_step_count(n_steps):
    """Version 7: a file encoded for its stop (every step of its schedule, a short payload) spends 4 header bytes on
    one tile: format, tag, flags (0x01 without 0x02) and the stop-schedule byte."""
    whole = header(n_steps=n_steps, t_end=container.STOP_GRID[30], steps_present=n_steps, payload_bytes=20)
    data = container.pack(whole, bytes(20))
    parsed = container.unpack(data, MID, 32)
    assert parsed.header == whole and parsed.header_bytes == 4 and data[2] & 0x03 == 0x01
    assert parsed.end_state == whole.end_state()
    for other in (dict(steps_present=n_steps - 1), dict(payload_bytes=300), dict(version=6)):
        h = header(**{"n_steps": n_steps, "t_end": container.STOP_GRID[30], "steps_present": n_steps, **other})
        packed = container.pack(h, bytes(h.payload_bytes))
        assert container.unpack(packed, MID, 32).header == h and packed[2] & 0x03 == 0
    bad = bytearray(data)
    bad[2] &= ~0x80  # 0x01 alone without a stop-schedule byte
    with pytest.raises(FormatError, match="unknown flags"):
        container.unpack(bytes(bad), MID, 32)


def test_other_settings_keep_the_full_form():
    for kw in (dict(lossless=1, pixel_crc=5), dict(seed=3), dict(budget_bits=17), dict(t_end=200),
               dict(n_steps=5, t_end=container.STOP_GRID[10]), dict(mode=1, lossless=1)):
        h = header(**{"n_steps": 8, "t_end": container.STOP_GRID[40], **kw})
        assert h.stop_schedule_code() is None
        assert container.unpack(container.pack(h, bytes(12)), MID, 32).header == h
    v5 = header(n_steps=8, t_end=container.STOP_GRID[40], version=5)
    assert v5.stop_schedule_code() is None and container.pack(v5, bytes(12))[2] & 0x10


def test_crafted_stop_schedule_flags_are_refused():
    v6 = bytearray(container.pack(header(n_steps=8, t_end=container.STOP_GRID[40], version=6), bytes(12)))
    data = bytearray(container.pack(header(n_steps=8, t_end=container.STOP_GRID[40]), bytes(12)))
    for patch, msg in (((0, 0xD5), "unknown flags"), ((2, v6[2] | 0x10), "unknown flags"),
                       ((2, v6[2] | 0x01), "unknown flags")):
        bad = bytearray(v6)  # (version 7 reads 0x01 alone as a whole stop schedule: test_a_whole_stop_schedule_...)
        bad[patch[0]] = patch[1]
        with pytest.raises(FormatError, match=msg):
            container.unpack(bytes(bad), MID, 32)
    with pytest.raises(FormatError, match="truncated header"):
        container.unpack(bytes(data[:4]), MID, 32)  # flags, the steps varint, and the code byte missing


def test_the_rule():
    T = 1000
    grid = container.STOP_GRID
    assert stop_schedules.stop_schedule(300, "progressive", T) is None
    assert stop_schedules.stop_schedule(0, "auto", T) is None and stop_schedules.stop_schedule(T, "stop", T) is None
    n, t_end = stop_schedules.stop_schedule(300, "auto", T)
    assert t_end == max(t for t in grid if t <= 300) and n in container.STOP_STEP_COUNTS
    low = stop_schedules.AUTO_MIN_STOP - 1
    assert stop_schedules.stop_schedule(low, "auto", T) is None
    assert stop_schedules.stop_schedule(low, "stop", T)[1] <= low
    assert stop_schedules.stop_schedule(grid[0] - 1, "stop", T) is None
    assert stop_schedules.stop_schedule(500, "stop", 100)  is None  # a stop past the model's T: x_T alone
    with pytest.raises(InputError, match="unknown schedule"):
        stop_schedules.stop_schedule(300, "fast", T)
    counts = [stop_schedules.steps_for_stop(t) for t in grid]
    assert counts == sorted(counts, reverse=True)  # deeper stops get at least as many steps


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("m")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from ddpmcodec.testing import make_tiny_model

    return make_tiny_model(tiny_dir, resolution=8, seed=3)


def _image(seed: int = 0, size: int = 8) -> np.ndarray:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("stop", [600, 250, 130])
def test_a_stop_schedule_file_decodes_to_the_encoders_reconstruction(tiny, stop):
    img = _image(stop)
    settings = CodecSettings(budget_bits=6)
    own = encode(img, tiny, CodecSettings(budget_bits=6, schedule="stop"), stop_at_t=stop)
    h = container.unpack(own.data).header
    expected = stop_schedules.stop_schedule(stop, "stop", 1000)
    assert (h.n_steps, h.t_end) == expected and not h.lossless and h.steps_present == h.n_steps
    last = list(decode_progressive(own.data, tiny, every_step=False))[-1]
    assert last.t == h.t_end and own.steps[-1].t == h.t_end
    from ddpmcodec.images import psnr

    assert psnr(last.pixels, img) == pytest.approx(own.steps[-1].psnr, abs=1e-9)
    # budget 6 is not the default, so this file keeps the full settings; with the default budget it takes the byte
    assert h.stop_schedule_code() is None and settings.budget_bits != container.DEFAULTS["budget_bits"]


def test_default_settings_take_the_byte_and_prefixes_stay_stop_schedule_files(tiny):
    img = _image(7)
    own = encode(img, tiny, CodecSettings(), stop_at_t=300)
    prog = encode(img, tiny, CodecSettings(schedule="progressive"), stop_at_t=300)
    assert own.data[2] & 0x80 and container.unpack(own.data).header.n_steps in container.STOP_STEP_COUNTS
    assert container.unpack(prog.data).header.n_steps == container.DEFAULTS["n_steps"]
    _, table = step_table(own.data, tiny)
    assert [e.t for e in table] == [s.t for s in own.steps]
    cut = truncate(own.data, tiny, stop_at_t=table[-2].t)
    assert cut[2] & 0x80 and len(cut) == table[-2].bytes
    assert np.array_equal(list(decode_progressive(cut, tiny, every_step=False))[-1].pixels,
                          list(decode_progressive(own.data, tiny, stop_at_t=table[-2].t, every_step=False))[-1].pixels)
    assert any("made for its stop" in line for line in summary_lines(container.unpack(own.data, None, 8), None))


def test_explicit_steps_or_t_end_are_kept(tiny):
    img = _image(8)
    res = encode(img, tiny, CodecSettings(n_steps=6), stop_at_t=300)
    assert res.header.n_steps == 6 and res.header.t_end == 10


def test_target_bpp_with_stop_schedules_stays_within_budget_and_never_loses(tiny):
    img = _image(9)
    for target in (1.0, 2.0, 4.0):
        data, res, stop = encode_within_bpp(img, tiny, CodecSettings(schedule="stop"), target)
        prog_data, _, prog_stop = encode_within_bpp(img, tiny, CodecSettings(schedule="progressive"), target)
        assert len(data) * 8 / 64 <= target and stop.psnr >= prog_stop.psnr
        last = list(decode_progressive(data, tiny, every_step=False))[-1]
        assert last.t == stop.t


def test_cli_schedule_option(tiny, tiny_dir, tmp_path):
    from PIL import Image

    from cli.main import main as cli

    src = tmp_path / "a.png"
    Image.fromarray(_image(4)).save(src)
    runner = CliRunner()
    model = str(tiny_dir / "tiny-r8-s3.safetensors")
    sizes = {}
    for choice in ("progressive", "auto"):
        out = tmp_path / f"{choice}.ddpm"
        r = runner.invoke(cli, ["encode", str(src), "-o", str(out), "--model", model, "--stop-at", "t=300",
                                "--schedule", choice, "-q"])
        assert r.exit_code == 0, r.output
        sizes[choice] = container.unpack(out.read_bytes()).header.n_steps
    assert sizes["progressive"] == 50 and sizes["auto"] in container.STOP_STEP_COUNTS
    r = runner.invoke(cli, ["encode", str(src), "-o", str(tmp_path / "b.ddpm"), "--model", model, "--mode",
                            "bitsback", "--schedule", "stop"])
    assert r.exit_code != 0 and "--schedule" in r.output


def test_past_bytes_ends_the_default_file_at_its_second_step_past_the_budget(tiny):
    img = _image(11)
    settings = CodecSettings(schedule="progressive")
    full = encode(img, tiny, settings)
    sizes = [s.bytes_if_stopped for s in full.steps[:-1]]
    budget = sizes[len(sizes) // 3]
    short = encode(img, tiny, settings, past_bytes=budget)
    first_past = next(k for k, b in enumerate(sizes) if b > budget)
    assert short.header.steps_present == first_past + 1 and not short.header.lossless  # two prefixes past the budget
    assert [s.bytes_if_stopped for s in short.steps] == sizes[: first_past + 2]  # the same chain, cut short
    for target in (8 * budget / 64, 8 * sizes[-1] / 64 + 1):  # a budget inside the chain, and one past t_end
        assert encode_within_bpp(img, tiny, CodecSettings(), target)[0] == \
            encode_within_bpp(img, tiny, CodecSettings(), target, base=full)[0]
