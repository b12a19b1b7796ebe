"""Dataset-scale evaluation on Ray (ddpmcodec.batch.ray_map): `ddpmcodec bound --ray`, `eval.codec_bench --ray` and
the report's chunks give exactly the numbers of a local run with one torch thread; failures are one line.

The tests that need Ray skip unless `pip install "ddpmcodec[cluster]"`; the install-hint test runs without it."""
from __future__ import annotations

import json
import operator
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main as cli
from ddpmcodec import bound as B
from ddpmcodec.batch.ray_map import ModelRef, TaskFailed, check_failures, map_tasks
from ddpmcodec.batch.ray_tasks import CRASH_MARKER_ENV
from ddpmcodec.codec.progressive import CodecSettings
from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.errors import InputError
from ddpmcodec.parallel import single_thread
from ddpmcodec.testing import make_tiny_model
from eval import bound as eval_bound
from eval import codec_bench
from eval.report import main as report
from eval.report import model as rm
from ddpmcodec.batch.result_cache import Cache

SMALL = DiffusionConfig(T=20, beta_start=1e-3, beta_end=0.2)
SETTINGS = CodecSettings(n_steps=4, t_end=2, budget_bits=6, margin_bits=2)
CODEC = ["--steps", "4", "--t-end", "2", "--budget", "6", "--margin", "2"]
HINT = '--ray needs Ray, which is not installed: pip install "ddpmcodec[cluster]"'
TIMINGS = ("encode_s", "unet_s", "decode_s", "seconds")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray_eval")
    model = make_tiny_model(d, resolution=8, seed=0, diffusion=SMALL)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(d / "images.npz", images=images)
    return model, str(d / "tiny-r8-s0.safetensors"), str(d / "images.npz"), images


def _assert_same_bound(a: B.BoundResult, b: B.BoundResult) -> None:
    for k in ("prior", "rate", "rate_clip", "distortion", "mse_t1_clip", "per_t_count", "mc_var"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)  # bit-identical, not close
    for k in B.TERM_KEYS:
        np.testing.assert_array_equal(a.per_t[k], b.per_t[k], err_msg=k)


def _no_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


# ---- without a cluster ---------------------------------------------------------------------------------------------
def test_ray_not_installed_gives_the_install_hint(env, tmp_path, monkeypatch, capsys):
    _, model, npz, _ = env
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(cli, ["bound", "--model", model, "--images", npz, "--out", str(tmp_path), "--ray",
                                   "auto", "-q"])
    assert res.exit_code == 1 and res.output.strip() == f"error: {HINT}", res.output
    assert codec_bench.main(["--model", model, "--images", npz, "--limit", "1", *CODEC, "--out", str(tmp_path),
                             "--ray", "auto"]) == 1
    assert capsys.readouterr().err == f"error: {HINT}\n"
    assert report.main(["--model", model, "--images", npz, "--limit", "1", "--out", str(tmp_path / "r"),
                        "--ray", "auto", "-q"]) == 1
    assert capsys.readouterr().err == f"error: {HINT}\n"
    assert eval_bound.main(["--model", model, "--images", npz, "--out", str(tmp_path / "b"), "--ray", "auto",
                            "-q"]) == 1
    assert capsys.readouterr().err == f"error: {HINT}\n"


def test_bad_address_is_one_line(env, tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray already runs in this process: the address is not used")
    _, model, npz, _ = env
    res = CliRunner().invoke(cli, ["bound", "--model", model, "--images", npz, "--out", str(tmp_path), "--ray",
                                   "no-port", "-q"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot start or reach Ray at 'no-port': "), res.output
    assert not ray.is_initialized()


# ---- the generic layer -----------------------------------------------------------------------------------------------
def test_failed_calls_come_back_in_place_and_make_one_line(ray_local):
    out = map_tasks(operator.truediv, [(1.0, 2.0), (1.0, 0.0), (3.0, 4.0)], address="auto")
    assert out[0] == 0.5 and out[2] == 0.75
    assert out[1] == TaskFailed("ZeroDivisionError: float division by zero")
    with pytest.raises(InputError) as e:
        check_failures(out)
    assert str(e.value) == ("1 of 3 Ray tasks failed after up to 3 retries (first: ZeroDivisionError: float "
                            "division by zero); finished work is kept, rerun to retry them")
    check_failures([1, 2])  # nothing failed: no error


def test_finished_chunks_are_cached_before_the_failure_is_reported(ray_local, tmp_path):
    cache = Cache(tmp_path)
    keys = [{"k": k} for k in range(3)]
    with pytest.raises(InputError, match="^1 of 3 Ray tasks failed"):
        cache.parts("div", keys, operator.truediv, [(2.0,), (0.0,), (4.0,)], None, ray="auto", ref=1.0)
    assert [cache.get_json("div", k) for k in keys] == [0.5, None, 0.25]
    assert cache.parts("div", keys, operator.truediv, [(2.0,), (1.0,), (4.0,)], None, ray="auto",
                       ref=1.0) == [0.5, 1.0, 0.25]  # the rerun computes only the missing chunk


# ---- the bound -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t_samples", [None, 3])
def test_bound_on_ray_is_bit_identical_to_a_one_thread_local_run(env, ray_local, t_samples):
    model, path, npz, images = env
    with single_thread():
        local = B.model_bound(model, images, t_samples=t_samples, seed=5, batch_size=8)
    # 2 batches (16 pairs) per task: tasks start and end inside images, none of them at image 0
    ray, paths = B.run_bound(path, images=npz, t_samples=t_samples, seed=5, batch_size=8, ray="auto", ray_batches=2)
    assert paths == [] and ray.n_images == 5
    _assert_same_bound(ray, local)


def test_cli_bound_on_ray_writes_the_local_json(env, ray_local, tmp_path):
    model, path, npz, _ = env
    args = ["bound", "--model", path, "--images", npz, "--batch-size", "4", "--t-samples", "2", "-q"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "ray"), "--ray", "auto", "--ray-batches", "3"])
    assert res.exit_code == 0, res.output
    with single_thread():
        local, _ = B.run_bound(path, images=npz, batch_size=4, t_samples=2, out_dir=tmp_path / "local")
    name = "bound-tiny-r8-s0-n5-k2-importance.json"
    a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("ray", "local"))
    assert a["total_bpd_per_image"] == b["total_bpd_per_image"] and a["terms_bpd"] == b["terms_bpd"]


def test_a_task_killed_mid_run_is_retried_with_the_same_result(env, ray_local, tmp_path, monkeypatch):
    model, path, npz, images = env
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))  # the first task exits after computing its range
    ray, _ = B.run_bound(path, images=npz, batch_size=8, ray="auto", ray_batches=2)
    assert marker.exists()  # a task did die
    with single_thread():
        _assert_same_bound(ray, B.model_bound(model, images, batch_size=8))


def test_bound_rerun_after_a_failed_task_computes_only_the_missing_ranges(env, tmp_path, monkeypatch):
    """Finished tasks are kept under --out/ray-parts as they return; a rerun submits only what is missing (a damaged
    part counts as missing) and gives the local numbers; the parts go once the JSON is written. Ray's scheduling is
    replaced by a local loop here, so this runs without Ray."""
    from ddpmcodec.batch import ray_bound, ray_tasks

    model, path, npz, images = env
    submitted: list[int] = []

    def local_map(fail: set[int]):
        def run(fn, calls, *, address, num_gpus=0, on_result=None):
            submitted.append(len(calls))
            out = [TaskFailed("killed") if i in fail else fn(*args) for i, args in enumerate(calls)]
            for i, r in enumerate(out):
                on_result(i, r)
            return out
        return run

    monkeypatch.setattr(ray_tasks, "connect", lambda address: None)
    monkeypatch.setattr(ray_bound, "map_tasks", local_map({1, 3}))
    parts = tmp_path / B.RAY_PARTS_FOLDER
    with pytest.raises(InputError, match="^2 of 7 Ray tasks failed"):  # 5 images x 11 pairs, 8 per task
        B.run_bound(path, images=npz, t_samples=10, seed=2, batch_size=4, ray="auto", ray_batches=2,
                    out_dir=tmp_path)
    kept = sorted(parts.glob("*.npz"))
    assert len(kept) == 5 and not list(tmp_path.glob("bound-*.json"))
    kept[0].write_bytes(b"damaged")
    kept[1].write_bytes(kept[1].read_bytes()[:60])  # a cut-off zip
    monkeypatch.setattr(ray_bound, "map_tasks", local_map(set()))
    resumed, paths = B.run_bound(path, images=npz, t_samples=10, seed=2, batch_size=4, ray="auto", ray_batches=2,
                                 out_dir=tmp_path)
    assert submitted == [7, 4]  # the two failed ranges and the two damaged ones
    assert not parts.exists() and all(p.is_file() for p in paths)
    with single_thread():
        _assert_same_bound(resumed, B.model_bound(model, images, t_samples=10, seed=2, batch_size=4))


# ---- the report's chunks and eval.codec_bench ------------------------------------------------------------------------
def test_report_chunks_on_ray_equal_local_ones_and_a_rerun_reads_them(env, ray_local, tmp_path, monkeypatch):
    model, path, _, images = env
    ref = ModelRef.of(path)
    with single_thread():
        bound_local, _ = rm.bound_exact(model, images, 3, Cache(tmp_path / "local"), chunk=2, seed=1)
        mc_local, _ = rm.bound_exact(model, images, 3, Cache(tmp_path / "local"), chunk=2, seed=1, t_samples=2)
    coded_local = rm.coded_per_image(model, images[:3], 3, SETTINGS, Cache(tmp_path / "local"), chunk=2)
    for _ in range(2):  # the second round reads every part from the cache and starts no task
        cache = Cache(tmp_path / "ray")
        bound, _ = rm.bound_exact(model, images, 3, cache, chunk=2, seed=1, ray="auto", ref=ref)
        mc, _ = rm.bound_exact(model, images, 3, cache, chunk=2, seed=1, t_samples=2, ray="auto", ref=ref)
        coded = rm.coded_per_image(model, images[:3], 3, SETTINGS, cache, chunk=2, ray="auto", ref=ref)
        _assert_same_bound(bound, bound_local)
        _assert_same_bound(mc, mc_local)
        assert _no_timings(coded) == _no_timings(coded_local) and [c["index"] for c in coded] == [3, 4, 5]
        monkeypatch.setattr("ddpmcodec.batch.ray_map.map_tasks", None)
    assert (cache.hits, cache.misses) == (3 + 3 + 2, 0)


def test_report_command_on_ray(env, ray_local, tmp_path):
    model, path, npz, images = env
    assert report.main(["--model", path, "--images", npz, "--limit", "2", "--bound-limit", "2", "--split-limit", "0",
                        "--strip-images", "0", *CODEC, "--no-classic", "--out", str(tmp_path / "out"),
                        "--cache", str(tmp_path / "cache"), "--bitsback-json", str(tmp_path / "none.json"),
                        "--ray", "auto", "-q"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "--ray auto" in s["command"]
    with single_thread():
        local, _ = rm.bound_exact(model, images[:2], 0, Cache(tmp_path / "local"))
    assert s["bound_summary"] == local.summary()
    per_image = rm.coded_per_image(model, images[:2], 0, SETTINGS, Cache(tmp_path / "local"))
    assert s["coded"]["lossless_bpd"] == rm.coded_curve(per_image, images[0].size)["lossless_bpd"]


def test_codec_bench_on_ray_writes_the_local_results(env, ray_local, tmp_path, monkeypatch):
    _, path, npz, _ = env
    args = ["--model", path, "--images", npz, "--limit", "5", "--offset", "0", *CODEC, "--decode-every", "2"]
    assert codec_bench.main([*args, "--out", str(tmp_path / "local")]) == 0
    name = "codec_s4_e2_b6_m2_calibrated_o0_n5.json"
    local = json.loads((tmp_path / "local" / name).read_text())
    for _ in range(2):  # the rerun merges the cached parts under --out/chunks and starts no task
        # tasks of images 0-2 and 3-4: the second one decodes its second image (run index 4), as the local run
        assert codec_bench.main([*args, "--out", str(tmp_path / "ray"), "--ray", "auto", "--ray-batch", "3"]) == 0
        r = json.loads((tmp_path / "ray" / name).read_text())
        assert _no_timings(r["per_image"]) == _no_timings(local["per_image"])
        assert [np.isnan(p["decode_s"]) for p in r["per_image"]] == [False, True, False, True, False]
        assert r["n_images"] == 5 and r["lossless_bpd"] == pytest.approx(local["lossless_bpd"], rel=1e-12)
        for s, t in zip(r["steps"], local["steps"]):
            assert s["t"] == t["t"] and s["coded_bpd"] == pytest.approx(t["coded_bpd"], rel=1e-12)
        assert len(list((tmp_path / "ray" / "chunks").glob("bench-*.json"))) == 2
        monkeypatch.setattr("ddpmcodec.batch.ray_map.map_tasks", None)
