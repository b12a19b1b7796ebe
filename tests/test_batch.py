"""Batch coding (ddpmcodec.batch, its Ray tasks and `encode/decode` with several inputs).

Every output must be byte-identical to a single-image encode, whatever the worker count or Ray."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from ddpmcodec.batch import decode_many, encode_many
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.errors import InputError
from ddpmcodec.images import load_image
from ddpmcodec.network.model_io import load_model
from ddpmcodec.testing import make_tiny_model, smooth_image

SETTINGS = CodecSettings(n_steps=8, budget_bits=6, margin_bits=2)
FAST = ["--steps", "8", "--budget", "6", "--margin", "2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    make_tiny_model(d, resolution=8, seed=0)
    model = str(d / "tiny-r8-s0.safetensors")
    src = d / "src"
    src.mkdir()
    Image.fromarray(smooth_image(10, 12, seed=1)).save(src / "a.png")
    Image.fromarray(smooth_image(8, 8, seed=2)).save(src / "b.png")
    Image.fromarray(smooth_image(9, 7, seed=3)[:, :, 0]).save(src / "c.png")  # grayscale
    (d / "bad.png").write_bytes(b"not an image")
    return d, model, src


def _single(model, path) -> bytes:
    img = load_image(path)
    return encode(img.pixels, model, SETTINGS, source_mode=img.source_mode).data


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def local_run(env):
    """One batch encode with 1 worker (in process) and one with 2 worker processes, plus single-image encodes."""
    d, model_path, src = env
    s1 = encode_many([src], model_path, SETTINGS, out_dir=d / "w1", workers=1)
    s2 = encode_many([src / "a.png", src / "b.png", src / "c.png"], model_path, SETTINGS, out_dir=d / "w2",
                     workers=2)
    model = load_model(model_path)
    single = {f"{p.stem}.ddpm": _single(model, p) for p in sorted(src.iterdir())}
    return s1, s2, single


def test_batch_is_byte_identical_to_single_encodes_for_any_worker_count(env, local_run):
    d, _, _ = env
    s1, s2, single = local_run
    assert (s1.done, s1.skipped, s1.failed) == (3, 0, 0) and (s2.done, s2.workers) == (3, 2)
    assert _files(d / "w1") == single
    assert _files(d / "w2") == single
    assert s1.total_bytes == sum(map(len, single.values()))
    assert s1.mean_bpp == pytest.approx(8 * s1.total_bytes / (10 * 12 + 8 * 8 + 9 * 7))
    assert s1.images_per_s > 0 and "3 coded, 0 skipped, 0 failed" in s1.line()


def test_decode_many_restores_the_images(env, local_run):
    d, model, src = env
    s = decode_many([d / "w1"], model, out_dir=d / "restored", workers=2)
    assert (s.done, s.failed) == (3, 0)
    for p in sorted(src.iterdir()):
        assert (d / "restored" / p.name).read_bytes()  # written, named <stem>.png
        np.testing.assert_array_equal(np.asarray(Image.open(d / "restored" / p.name)), np.asarray(Image.open(p)))


def test_rerun_skips_complete_outputs_and_force_recodes(env, local_run, tmp_path):
    d, model, src = env
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.ddpm").write_bytes((d / "w1" / "a.ddpm").read_bytes())  # complete: skipped
    (out / "b.ddpm").write_bytes((d / "w1" / "b.ddpm").read_bytes()[:-5])  # not complete: refused without -f
    s = encode_many([src], model, SETTINGS, out_dir=out)
    assert [r.status for r in s.results] == ["skipped", "failed", "done"]
    assert "not a complete .ddpm" in s.failures[0][1]
    s = encode_many([src], model, SETTINGS, out_dir=out, force=True)
    assert (s.done, s.skipped) == (3, 0)
    assert _files(out) == _files(d / "w1")
    calls = []
    s = encode_many([src], model, SETTINGS, out_dir=out, progress=lambda k, n: calls.append((k, n)))
    assert (s.done, s.skipped, s.total_bytes) == (0, 3, 0) and calls[-1] == (3, 3)


def test_a_failed_item_does_not_stop_the_others(env, tmp_path):
    d, model, src = env
    s = encode_many([d / "bad.png", src / "b.png"], model, SETTINGS, out_dir=tmp_path / "o")
    assert [r.status for r in s.results] == ["failed", "done"]
    (source, reason), = s.failures
    assert source.endswith("bad.png") and "not a readable image" in reason and "\n" not in reason
    assert not (tmp_path / "o" / "bad.ddpm").exists()
    s = encode_many([src / "a.png"], str(d / "tiny-r8-s0.safetensors"), SETTINGS, out_dir=tmp_path / "o",
                    target_bpp=0.01)
    assert s.failed == 1 and "--target-bpp 0.01 is below the smallest possible file" in s.failures[0][1]


def test_clashing_names_and_bad_sources_are_refused(env, tmp_path):
    d, model, src = env
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(smooth_image(8, 8)).save(other / "a.jpg")
    with pytest.raises(InputError, match="would both write"):
        encode_many([src, other], model, SETTINGS, out_dir=tmp_path / "o")
    with pytest.raises(InputError, match="no such file or folder"):
        encode_many([tmp_path / "missing.png"], model, SETTINGS, out_dir=tmp_path / "o")
    with pytest.raises(InputError, match="model not found"):
        encode_many([src], tmp_path / "nomodel.safetensors", SETTINGS, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_npz_dataset_items_and_lossy_options(env, tmp_path):
    d, model_path, _ = env
    images = np.stack([smooth_image(8, 8, seed=s) for s in range(2)])
    np.savez(tmp_path / "set.npz", images=images)
    s = encode_many([tmp_path / "set.npz"], model_path, SETTINGS, out_dir=tmp_path / "o", stop_at_t=300)
    assert s.done == 2 and sorted(os.listdir(tmp_path / "o")) == ["set_00000.ddpm", "set_00001.ddpm"]
    model = load_model(model_path)
    expected = encode(images[1], model, SETTINGS, stop_at_t=300).data
    assert (tmp_path / "o" / "set_00001.ddpm").read_bytes() == expected


def test_partial_file_fails_unless_allowed(env, tmp_path):
    d, model, _ = env
    whole = (d / "w1" / "a.ddpm").read_bytes()
    (tmp_path / "cut.ddpm").write_bytes(whole[: len(whole) * 2 // 3])
    s = decode_many([tmp_path / "cut.ddpm"], model, out_dir=tmp_path / "o")
    assert s.failed == 1 and "partial file" in s.failures[0][1] and not (tmp_path / "o" / "cut.png").exists()
    s = decode_many([tmp_path / "cut.ddpm"], model, out_dir=tmp_path / "o", allow_partial=True)
    assert s.done == 1 and (tmp_path / "o" / "cut.png").is_file()


def test_bitsback_mode_matches_single_image_files(env, tmp_path):
    from ddpmcodec.bitsback.codec import BitsBackSettings, encode_image

    d, model_path, src = env
    settings = BitsBackSettings(n_steps=4)
    s = encode_many([src / "b.png"], model_path, settings, out_dir=tmp_path / "o")
    assert s.done == 1
    img = load_image(src / "b.png")
    expected = encode_image(img.pixels, load_model(model_path), settings, source_mode=img.source_mode).data
    assert (tmp_path / "o" / "b.ddpm").read_bytes() == expected
    s = decode_many([tmp_path / "o" / "b.ddpm"], model_path, out_dir=tmp_path / "r")
    assert s.done == 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r" / "b.png")), img.pixels)


# ---- CLI ---------------------------------------------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_several_inputs_into_a_folder(env, local_run, tmp_path):
    d, model, src = env
    out = tmp_path / "new" / "out"  # created with its parents
    res = run("encode", src / "a.png", src / "b.png", src / "c.png", "-o", out, "--model", model, *FAST,
              "--workers", "1")
    assert res.exit_code == 0, res.output
    assert _files(out) == _files(d / "w1")
    last = res.output.strip().splitlines()[-1]
    assert "3 images: 3 coded, 0 skipped, 0 failed" in last and "bpp" in last and "images/s" in last
    res = run("encode", src, "-o", out, "--model", model, *FAST, "--workers", "1")
    assert res.exit_code == 0 and "0 coded, 3 skipped" in res.output
    res = run("decode", *sorted(out.glob("*.ddpm")), "-o", tmp_path / "restored", "--model", model, "-q",
              "--workers", "1")
    assert res.exit_code == 0 and res.output == ""
    assert sorted(os.listdir(tmp_path / "restored")) == ["a.png", "b.png", "c.png"]


def test_cli_failures_exit_1_with_one_line_each(env, tmp_path):
    d, model, src = env
    res = run("encode", d / "bad.png", src / "b.png", "-o", tmp_path / "o", "--model", model, *FAST, "-q",
              "--workers", "1")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {d / 'bad.png'}: ") and "Traceback" not in res.output
    assert (tmp_path / "o" / "b.ddpm").is_file()


@pytest.mark.parametrize("args, message", [
    (["encode", "{src}/a.png", "{src}/b.png"], "-o/--output must name an output folder"),
    (["encode", "{src}/a.png", "{src}/b.png", "-o", "{src}/a.png"], "exists and is not a folder"),
    (["encode", "{src}", "-o", "{tmp}/o", "-v"], "-v/--verbose (the per-step table) takes one input image"),
    (["decode", "{tmp}/x.ddpm", "{tmp}/y.ddpm", "-o", "{tmp}/o", "--frames", "{tmp}/f"], "--frames takes one input"),
])
def test_cli_batch_option_errors_are_one_line(env, tmp_path, args, message):
    d, model, src = env
    res = run(*[a.format(src=src, tmp=tmp_path) for a in args], "--model", model)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


def test_cli_ray_without_ray_installed_says_how_to_install(env, tmp_path, monkeypatch):
    d, model, src = env
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = run("encode", src, "-o", tmp_path / "o", "--model", model, "--ray", "auto", *FAST)
    assert res.exit_code == 1
    assert res.output.strip() == 'error: --ray needs Ray, which is not installed: pip install "ddpmcodec[cluster]"'


# ---- Ray ---------------------------------------------------------------------------------------------------------
def test_ray_gives_the_same_files_as_a_local_run(env, local_run, ray_local, tmp_path):
    d, model, src = env
    s = encode_many([src], model, SETTINGS, out_dir=tmp_path / "o", ray="auto", ray_batch=2)
    assert (s.done, s.failed) == (3, 0)
    assert _files(tmp_path / "o") == _files(d / "w1")
    s = encode_many([src], model, SETTINGS, out_dir=tmp_path / "o", ray="auto", ray_batch=2)
    assert (s.done, s.skipped) == (0, 3)
    s = decode_many([tmp_path / "o"], model, out_dir=tmp_path / "r", ray="auto")
    assert s.done == 3
    for p in sorted(src.iterdir()):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r" / p.name)), np.asarray(Image.open(p)))


def test_ray_task_killed_mid_run_is_retried(env, local_run, ray_local, tmp_path, monkeypatch):
    d, model, src = env
    marker = tmp_path / "crashed"
    monkeypatch.setenv("DDPMCODEC_TEST_RAY_CRASH_MARKER", str(marker))  # the first task exits after one image
    s = encode_many([src], model, SETTINGS, out_dir=tmp_path / "o", ray="auto", ray_batch=2)
    assert marker.exists()  # a task did die
    assert (s.done, s.failed) == (3, 0)
    assert any("earlier attempt" in r.reason for r in s.results)
    assert _files(tmp_path / "o") == _files(d / "w1")
