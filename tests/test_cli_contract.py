"""The CLI's contract (issue 9): one-line errors for bad inputs/outputs, 16-bit refusal, bits-back option conflicts,
file modes, progress, nearest coded steps, -q on every command, partial files (exit 3), quick start paths."""
from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from ddpmcodec.testing import make_tiny_model

FAST = ["--steps", "8", "--budget", "6", "--margin", "2"]
ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    make_tiny_model(d, resolution=8, seed=0)
    model = str(d / "tiny-r8-s0.safetensors")
    rng = np.random.default_rng(1)
    rgb = np.clip(np.cumsum(rng.integers(-8, 9, (10, 12, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "img.png")
    res = run("encode", d / "img.png", "-o", d / "full.ddpm", "--model", model, *FAST, "-q")
    assert res.exit_code == 0, res.output
    run("encode", d / "img.png", "-o", d / "bb.ddpm", "--mode", "bitsback", "--steps", "6", "--model", model, "-q")
    full = (d / "full.ddpm").read_bytes()
    (d / "half.ddpm").write_bytes(full[: len(full) // 2])
    (d / "folder").mkdir()
    return d, model


def run(*args, ok=True, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == code, res.output
    return res


def one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and "Usage:" not in res.output
    for w in words:
        assert w in lines[0], lines[0]


# ---- 1. 16-bit inputs ----------------------------------------------------------------------------------------------
def png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG from raw chunks (colour type from the channel count: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)."""
    arr = arr if arr.ndim == 3 else arr[:, :, None]
    h, w, c = arr.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels,kind", [(3, "16-bit RGB"), (4, "16-bit RGBA"), (1, "16-bit grayscale"),
                                           (2, "16-bit grayscale+alpha")])
def test_16_bit_png_is_refused(env, tmp_path, channels, kind):
    d, model = env
    arr = (np.arange(10 * 12 * channels).reshape(10, 12, channels) * 977 % 65536).astype(np.uint16)
    if channels in (2, 4):
        arr[:, :, -1] = 65535  # opaque: refused for its depth, not its alpha
    png16(tmp_path / "deep.png", arr)
    assert Image.open(tmp_path / "deep.png").size == (12, 10)  # a valid PNG that Pillow opens
    one_line_error(run("encode", tmp_path / "deep.png", "--model", model, ok=False), kind, "8-bit")
    assert not (tmp_path / "deep.ddpm").exists()


def test_16_bit_tiff_and_ppm_are_refused_8_bit_accepted(env, tmp_path):
    d, model = env
    (tmp_path / "deep.ppm").write_bytes(b"P6 4 3 65535\n" + np.full((3, 4, 3), 1000, ">u2").tobytes())
    one_line_error(run("encode", tmp_path / "deep.ppm", "--model", model, ok=False), "16-bit RGB")
    imagecodecs = pytest.importorskip("imagecodecs")
    (tmp_path / "deep.tif").write_bytes(imagecodecs.tiff_encode(np.full((4, 5, 3), 1000, np.uint16)))
    one_line_error(run("encode", tmp_path / "deep.tif", "--model", model, ok=False), "16-bit RGB")
    (tmp_path / "ok.tif").write_bytes(imagecodecs.tiff_encode(np.full((4, 5, 3), 100, np.uint8)))
    from ddpmcodec.images import load_image

    assert load_image(tmp_path / "ok.tif").pixels.shape == (4, 5, 3)


# ---- 2. bits-back option conflicts and its --steps default -----------------------------------------------------------
@pytest.mark.parametrize("opts,flag", [(["--stop-at", "t=100"], "--stop-at"), (["--target-bpp", "3"], "--target-bpp"),
                                       (["--target-psnr", "30"], "--target-psnr"), (["--budget", "6"], "--budget"),
                                       (["--margin", "2"], "--margin"), (["--prior", "fixedlarge"], "--prior"),
                                       (["--budget", "12"], "--budget"), (["-v"], "--verbose")])
def test_bitsback_refuses_progressive_options(env, tmp_path, opts, flag):
    d, model = env
    res = run("encode", d / "img.png", "-o", tmp_path / "x.ddpm", "--mode", "bitsback", *opts, "--model", model,
              ok=False)
    one_line_error(res, flag, "bitsback")
    assert not (tmp_path / "x.ddpm").exists()


def test_steps_default_depends_on_mode(env, tmp_path, monkeypatch):
    d, model = env
    assert "[50; 100 with --mode bitsback]" in " ".join(run("encode", "--help").output.split())
    import cli.commands_bitsback as bb
    import ddpmcodec.codec.progressive as progressive
    from ddpmcodec.errors import InputError

    seen = {}

    def fake_bitsback(img, model, out, force, n_steps, quiet, **settings):
        seen["bitsback"] = (n_steps, settings)

    def fake_encode(pixels, model, settings, **kw):
        seen["progressive"] = settings
        raise InputError("stop here")

    monkeypatch.setattr(bb, "encode_bitsback", fake_bitsback)
    monkeypatch.setattr(progressive, "encode", fake_encode)
    run("encode", d / "img.png", "-o", tmp_path / "b.ddpm", "--mode", "bitsback", "--model", model)
    assert seen["bitsback"] == (100, {"t_end": 1, "seed": 0, "exact_network": False})
    run("encode", d / "img.png", "-o", tmp_path / "b.ddpm", "--mode", "bitsback", "--steps", "7", "--t-end", "3",
        "--seed", "5", "--model", model)
    assert seen["bitsback"] == (7, {"t_end": 3, "seed": 5, "exact_network": False})
    one_line_error(run("encode", d / "img.png", "-o", tmp_path / "p.ddpm", "--model", model, ok=False), "stop here")
    assert (seen["progressive"].n_steps, seen["progressive"].t_end) == (50, None)  # None: the model's default


# ---- 3. file modes ---------------------------------------------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_write_gives_plain_write_modes(tmp_path):
    from ddpmcodec.atomic_write import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"1")
        with open(tmp_path / "b", "wb") as fh:
            fh.write(b"1")
        assert _mode(tmp_path / "a") == _mode(tmp_path / "b") == 0o640
        os.chmod(tmp_path / "a", 0o604)
        atomic_write(tmp_path / "a", b"2")  # overwriting keeps the file's mode, as a plain write does
        assert _mode(tmp_path / "a") == 0o604 and (tmp_path / "a").read_bytes() == b"2"
        os.umask(0o002)
        atomic_write(tmp_path / "c", b"1")
        assert _mode(tmp_path / "c") == 0o664
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_outputs_and_frames_get_umask_modes_and_frames_do_not_clobber(env, tmp_path):
    d, model = env
    old = os.umask(0o022)
    try:
        run("encode", d / "img.png", "-o", tmp_path / "a.ddpm", "--stop-at", "t=300", "--model", model, *FAST, "-q")
        assert _mode(tmp_path / "a.ddpm") == 0o644
        run("decode", tmp_path / "a.ddpm", "-o", tmp_path / "a.png", "--frames", tmp_path / "fr", "--model", model,
            "-q")
        assert _mode(tmp_path / "a.png") == 0o644
        frames = sorted((tmp_path / "fr").iterdir())
        assert len(frames) >= 4 and {_mode(p) for p in frames} == {0o644}
        os.umask(0o077)
        os.chmod(tmp_path / "a.png", 0o640)
        run("decode", tmp_path / "a.ddpm", "-o", tmp_path / "a.png", "-f", "--model", model, "-q")
        assert _mode(tmp_path / "a.png") == 0o640  # an overwritten file keeps its mode
    finally:
        os.umask(old)
    before = {p.name: p.read_bytes() for p in frames}
    one_line_error(run("decode", tmp_path / "a.ddpm", "-o", tmp_path / "b.png", "--frames", tmp_path / "fr",
                       "--model", model, ok=False), "-f")
    assert {p.name: p.read_bytes() for p in frames} == before and not (tmp_path / "b.png").exists()
    run("decode", tmp_path / "a.ddpm", "-o", tmp_path / "b.png", "--frames", tmp_path / "fr", "-f", "--model", model,
        "-q")
    assert sorted(p.name for p in (tmp_path / "fr").iterdir()) == sorted(before)


# ---- 4. directories, missing and unreadable files ------------------------------------------------------------------
def test_directories_and_missing_paths_are_one_line_errors(env, tmp_path):
    d, model = env
    folder, missing, img = d / "folder", tmp_path / "missing.png", d / "img.png"
    (tmp_path / "afile").write_bytes(b"x")
    afile = tmp_path / "afile"
    m = ["--model", model]
    cases = [
        ["encode", folder, *m], ["encode", missing, *m], ["encode", img, "-o", folder, *m],
        ["encode", img, "-o", folder, "-f", *m], ["encode", img, "-o", tmp_path / "nodir" / "x.ddpm", *m],
        ["encode", img, "-o", afile / "x.ddpm", *m],
        ["decode", folder, *m], ["decode", tmp_path / "missing.ddpm", *m],
        ["decode", d / "full.ddpm", "-o", folder, *m], ["decode", d / "full.ddpm", "-o", tmp_path / "o.png",
                                                         "--frames", afile, *m],
        ["info", folder], ["info", tmp_path / "missing.ddpm"],
        ["truncate", folder, *m], ["truncate", tmp_path / "missing.ddpm", *m],
        ["truncate", d / "full.ddpm", "--stop-at", "t=300", "-o", folder, *m],
        ["pack", img, "-o", tmp_path / "s.ddpm", *m], ["pack", tmp_path / "nofolder", "-o", tmp_path / "s.ddpm", *m],
        ["pack", folder, "-o", folder, *m],
        ["unpack", folder, "-o", tmp_path / "out", *m], ["unpack", tmp_path / "missing.ddpm", "-o", tmp_path / "o", *m],
        ["unpack", d / "bb.ddpm", "-o", afile, *m],
        ["calibrate", "-o", folder, *m], ["calibrate", "-o", tmp_path / "c.safetensors", "--data", missing, *m],
        ["train", "--out", folder], ["train", "--out", afile / "m.safetensors"],
        ["train", "--out", tmp_path / "m.safetensors", "--data", missing],
        ["bound", "--images", missing, "--out", tmp_path / "b"], ["bound", "--images", img, "--out", afile],
    ]
    for args in cases:
        res = run(*args, ok=False)
        assert res.exit_code == 1, (args, res.output)
        one_line_error(res)
    assert not (tmp_path / "s.ddpm").exists() and not (tmp_path / "o.png").exists()
    # a malformed command line stays a usage error
    assert run("encode", img, "--no-such-option", ok=False).exit_code == 2


def test_unreadable_inputs_are_one_line_errors(env, tmp_path, monkeypatch):
    d, model = env
    for name in ("img.png", "full.ddpm"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
        os.chmod(tmp_path / name, 0)
    if IS_ROOT:  # root reads files whatever their mode: make open() refuse them as it would for a user
        import builtins

        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file).parent == tmp_path and Path(file).name in (
                    "img.png", "full.ddpm"):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    one_line_error(run("encode", tmp_path / "img.png", "-o", tmp_path / "x.ddpm", "--model", model, ok=False),
                   "cannot read")
    for cmd in ("decode", "truncate"):
        one_line_error(run(cmd, tmp_path / "full.ddpm", "-o", tmp_path / "y", "--model", model, ok=False),
                       "cannot read")
    one_line_error(run("info", tmp_path / "full.ddpm", ok=False), "cannot read")
    assert not (tmp_path / "x.ddpm").exists() and not (tmp_path / "y").exists()


# ---- 5. decode progress per network evaluation -----------------------------------------------------------------------
def test_decode_progress_advances_per_step(env, tmp_path, monkeypatch):
    d, model = env
    import cli.commands_codec as cc

    class Bar:
        def __init__(self):
            self.total, self.n, self.seen = None, 0, []

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            self.n += k
            self.seen.append((self.n, self.total))

    bars = []
    monkeypatch.setattr(cc, "_bar", lambda total, desc, enabled: bars.append(Bar()) or bars[-1])
    run("decode", d / "full.ddpm", "-o", tmp_path / "p.png", "--model", model, "-q")
    seen = bars[-1].seen
    n = seen[-1][1]
    assert n > 3 and [k for k, _ in seen] == list(range(1, n + 1)) and seen[-1] == (n, n)


# ---- 6. nearest coded step -------------------------------------------------------------------------------------------
def test_stop_at_says_which_coded_step_it_used(env, tmp_path):
    d, model = env
    out = run("encode", d / "img.png", "-o", tmp_path / "s.ddpm", "--stop-at", "t=100", "--model", model,
              *FAST).output
    t = int(re.search(r"stops at t=(\d+)", out).group(1))
    assert t < 100 and "(first coded step at or below t=100)" in out and "nan" not in out
    out = run("decode", d / "full.ddpm", "--stop-at", "t=100", "-o", tmp_path / "s.png", "--model", model).output
    assert f"x^_0 at t={t} (first coded step at or below t=100)" in out


# ---- 7. -q on every command ------------------------------------------------------------------------------------------
def test_every_command_takes_quiet(env, tmp_path):
    d, model = env
    for name in sorted(main.commands):
        assert "-q, --quiet" in run(name, "--help").output, name
    assert run("truncate", d / "full.ddpm", "--stop-at", "t=300", "-o", tmp_path / "t.ddpm", "--model", model,
               "-q").output == ""
    assert "->" in run("truncate", d / "full.ddpm", "--stop-at", "t=300", "-o", tmp_path / "t2.ddpm", "--model",
                       model).output
    res = run("info", d / "full.ddpm", "--no-steps", "-q")
    assert "format" in res.output


# ---- 8. quick start writes only ignored files ----------------------------------------------------------------------
def test_quick_start_writes_under_an_ignored_folder():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    outputs = re.findall(r"-o\s+(\S+)", block)
    assert len(outputs) == 2, block
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for out in outputs:
        top = Path(out).parts[0]
        assert len(Path(out).parts) > 1 and top in ignored, out
        assert f"mkdir -p {Path(out).parent}" in block  # works on a fresh clone, where the folder is absent


# ---- 9. partial files ------------------------------------------------------------------------------------------------
def test_partial_file_exit_status_and_warning(env, tmp_path):
    d, model = env
    half = d / "half.ddpm"
    res = run("decode", half, "-o", tmp_path / "a.png", "--model", model, code=3)
    assert (tmp_path / "a.png").is_file()
    warn = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and f"{half} is a partial file: decoded up to t=" in warn[0]
    assert f"{half.stat().st_size} of {(d / 'full.ddpm').stat().st_size} bytes present" in warn[0]
    res = run("decode", half, "-o", tmp_path / "b.png", "--model", model, "-q", code=3)
    assert res.output.startswith("warning: ") and len(res.output.strip().splitlines()) == 1
    assert (tmp_path / "b.png").is_file()
    res = run("decode", half, "-o", tmp_path / "c.png", "--model", model, "--allow-partial")
    assert "warning: " in res.output and "partial file" in res.output
    assert run("decode", half, "-o", tmp_path / "d.png", "--model", model, "--allow-partial", "-q").output == ""
    assert run("decode", d / "full.ddpm", "-o", tmp_path / "e.png", "--model", model, "-q").output == ""
    assert "--allow-partial" in run("decode", "--help").output
    res = run("info", half, "--model", model)
    assert "PARTIAL" in res.stdout and "partial file" in res.stderr
    assert "partial" not in run("info", half, "--model", model, "-q").stderr


# ---- 10. unreachable --target-psnr -----------------------------------------------------------------------------------
def test_unreachable_target_psnr_prints_no_nan(env, tmp_path):
    d, model = env
    res = run("encode", d / "img.png", "-o", tmp_path / "p.ddpm", "--target-psnr", "500", "--model", model, *FAST,
              "-v")
    assert "nan" not in res.output.lower() and "target PSNR" in res.output and "not reached" in res.output
    assert "lossless" in res.output  # an unreachable target gives the lossless file, not one ending at t_end
    run("decode", tmp_path / "p.ddpm", "-o", tmp_path / "p.png", "--model", model, "-q")
    rgb = np.asarray(Image.open(d / "img.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), rgb)


# ---- crafted headers with valid checks: refused before any allocation (issue 9, item 2) ---------------------------
def _crafted(d: Path, model: str, name: str, **fields) -> Path:
    from ddpmcodec.codec.progressive import codec_model_id
    from ddpmcodec.container import header as container
    from ddpmcodec.network.model_io import load_model
    from ddpmcodec.schedule.steps import profile_for
    from ddpmcodec.testing import pack_without_steps

    m = load_model(model)
    base = dict(mode=0, model_id=codec_model_id(m, profile_for(m)), width=8, height=8, source_mode=0, tile=8,
                steps_present=0, lossless=0, prior_kind=1, pixel_crc=0, payload_bytes=0, **container.DEFAULTS)
    base.update(fields)
    path = d / name
    if base["payload_bytes"]:
        path.write_bytes(container.pack(container.Header(**base), bytes(base["payload_bytes"])))
    else:
        path.write_bytes(pack_without_steps(container.Header(**base)))
    return path


@pytest.mark.parametrize("fields,words", [
    (dict(width=65536, height=65536), ["pixels", "--max-pixels"]),
    (dict(width=8192, height=8192, payload_bytes=140), ["pixels"]),
    (dict(width=4000, height=4000), ["network evaluations", "--max-pixels"]),
    (dict(t_end=5000, n_steps=60), ["schedule"]),
])
def test_crafted_headers_are_refused_in_one_line(env, tmp_path, fields, words):
    d, model = env
    path = _crafted(tmp_path, model, "crafted.ddpm", **fields)
    for cmd in (["decode", path, "-o", tmp_path / "o.png", "-f"], ["info", path], ["truncate", path, "-o",
                                                                                    tmp_path / "t.ddpm"]):
        one_line_error(run(*cmd, "--model", model, ok=False), *words)


def test_max_pixels_raises_the_limits_for_a_large_image(env, tmp_path):
    d, model = env
    path = _crafted(tmp_path, model, "wide.ddpm", width=8 * 80, height=8 * 80)  # 6400 tiles, x_T only, 13 bytes
    one_line_error(run("decode", path, "-o", tmp_path / "o.png", "--model", model, ok=False), "network evaluations")
    run("info", path, "--model", model, "--max-pixels", str(10 ** 6))


def test_no_windows_turns_windowed_evaluation_off(env, tmp_path):
    from ddpmcodec.container import header as container

    d, model = env
    img = np.clip(np.cumsum(np.random.default_rng(3).integers(-8, 9, (12, 20, 3)), axis=1) + 128, 0, 255)
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "wide.png")  # 2x3 tiles of 8 px
    for flag, expected in (([], 1), (["--no-windows"], 0), (["--windows"], 1)):
        out = tmp_path / f"w{len(flag)}{expected}.ddpm"
        run("encode", tmp_path / "wide.png", "-o", out, "--model", model, *FAST, "--stop-at", "t=300", "-q", *flag)
        assert container.unpack(out.read_bytes()).header.windowed == expected


def test_package_version_matches_pyproject_and_format_release():
    import re
    from pathlib import Path

    import ddpmcodec
    from ddpmcodec.container import header

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert ddpmcodec.__version__ == version
    release = ".".join(version.split(".")[:2])
    assert release not in header.RELEASES.values()  # older formats name older releases


def test_every_source_package_imports_outside_the_source_tree(tmp_path):
    """Run from another folder, so the installed package is imported, not this checkout: catches subpackages that
    the install leaves out (CI installs with `pip install .`, not in editable mode)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    names = sorted(".".join(p.parent.relative_to(root).parts) for top in ("ddpmcodec", "cli")
                   for p in (root / top).rglob("__init__.py"))
    code = "import importlib\nfor n in %r:\n    importlib.import_module(n)\n" % names
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
