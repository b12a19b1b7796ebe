"""Training: a tiny CPU smoke run, bitwise resume (step counter, EMA, optimizer, RNG), --init, sampling, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ddpmcodec.network import training as tr
from ddpmcodec.errors import InputError
from ddpmcodec.network.model_io import load_model
from ddpmcodec.testing import make_tiny_model

FAST = dict(batch_size=4, warmup=2, ema_decay=0.9, sample_every=0, log_every=1, checkpoint_every=2)


def _images(n=12, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def arch_json(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(tr.architecture("tiny", resolution=8).to_dict()))
    return str(path)


def _state(path):
    return torch.load(tr.state_path(path), weights_only=True)


def test_config_helpers(tmp_path):
    cfg = tr.TrainConfig(warmup=4)
    assert [tr.lr_at(s, cfg) for s in (0, 1, 3, 10)] == pytest.approx([5e-5, 1e-4, 2e-4, 2e-4])
    assert tr.lr_at(0, tr.TrainConfig(warmup=0)) == 2e-4
    assert tr.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert tr.architecture("cifar10-ch128").ch == 128 and tr.architecture("cifar10-ch64").attn_resolutions == (16,)
    with pytest.raises(InputError):
        tr.architecture(str(tmp_path / "missing.json"))
    assert tr.state_path(tmp_path / "m.safetensors").name == "m.train.pt"
    assert tr.timestep_sequence(5) == [5, 4, 3, 2, 1]
    seq = tr.timestep_sequence(1000, 10)
    assert seq[0] == 1000 and seq[-1] == 1 and len(seq) == 10


def test_smoke_and_bitwise_resume(tmp_path, arch_json):
    """4 steps in one go == 2 steps + resume for 2 more: raw weights, EMA, optimizer state and step counter."""
    images = _images()
    straight = tmp_path / "a" / "model.safetensors"
    meta = tr.train(straight, {**FAST, "steps": 4, "sample_every": 4, "sample_steps": 3, "n_samples": 4},
                    arch=arch_json, images=images, progress=False, log=lambda m: None)
    assert meta["steps"] == 4 and meta["run_steps"] == 4 and np.isfinite(meta["final_loss"])
    assert meta["recipe"]["ema_decay"] == 0.9 and meta["init"] is None
    assert (straight.parent / "model.samples-0000004.png").is_file()
    assert len((straight.parent / "model.train_log.txt").read_text().splitlines()) == 4

    split = tmp_path / "b" / "model.safetensors"
    tr.train(split, {**FAST, "steps": 2}, arch=arch_json, images=images, progress=False, log=lambda m: None)
    assert _state(split)["step"] == 2
    ema2 = load_model(split).net.state_dict()
    logs = []
    meta = tr.train(split, {"steps": 4}, images=images, progress=False, log=logs.append)
    assert meta["run_steps"] == 4 and "resuming" in logs[0]
    a, b = _state(straight), _state(split)
    assert b["step"] == 4 and b["config"]["ema_decay"] == 0.9  # stored recipe kept on resume
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    ma, mb = load_model(straight), load_model(split)
    assert ma.identity == mb.identity  # EMA weights identical
    assert mb.metadata["training"]["steps"] == 4
    assert not torch.equal(ema2["conv_in.weight"], mb.net.state_dict()["conv_in.weight"])  # EMA moved on

    logs.clear()
    tr.train(split, {"steps": 4}, images=images, progress=False, log=logs.append)  # nothing left to do
    assert "already at step 4" in logs[-1]


def test_init_ema_update_and_metadata(tmp_path):
    """From --init weights w0, one step gives raw w1 and EMA = d w0 + (1 - d) w1; steps add to the init's."""
    base = make_tiny_model(tmp_path, resolution=8, seed=3)
    src = next(tmp_path.glob("tiny-*.safetensors"))
    out = tmp_path / "cont.safetensors"
    meta = tr.train(out, {**FAST, "steps": 1}, init=str(src), images=_images(), progress=False, log=lambda m: None)
    assert meta["init"]["identity"] == base.identity and meta["steps"] == 1
    w0 = base.net.state_dict()
    w1 = _state(out)["net"]
    ema = load_model(out).net.state_dict()
    for k in ("conv_in.weight", "up.0.block.0.conv2.bias"):
        torch.testing.assert_close(ema[k], 0.9 * w0[k] + 0.1 * w1[k], rtol=1e-5, atol=1e-6)
        assert not torch.equal(w0[k], w1[k])
    with pytest.raises(InputError, match="drop --init"):
        tr.train(out, {"steps": 2}, init=str(src), images=_images(), progress=False)


def test_training_errors(tmp_path, arch_json):
    with pytest.raises(InputError, match="safetensors"):
        tr.train(tmp_path / "m.pt", {"steps": 1}, arch=arch_json, images=_images(), progress=False)
    with pytest.raises(InputError, match="do not fit"):
        tr.train(tmp_path / "m.safetensors", {"steps": 1}, arch=arch_json, images=_images(size=16), progress=False)


def test_sample_deterministic_shapes(tmp_path, tiny_model):
    a = tr.sample(tiny_model, 3, steps=4, seed=1)
    b = tr.sample(tiny_model, 3, steps=4, seed=1, batch_size=2)
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    path = tr.save_grid(a, tmp_path / "grid.png")
    assert Image.open(path).size == (2 * 10 + 2, 2 * 10 + 2)


def test_cli_train_and_resume(tmp_path, arch_json):
    from cli.main import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(4, size=12)):
        Image.fromarray(im).save(folder / f"{i}.png")
    out = tmp_path / "run" / "m.safetensors"
    args = ["train", "--out", str(out), "--arch", arch_json, "--data", str(folder), "--batch-size", "2",
            "--sample-every", "0", "--device", "cpu", "--warmup", "1", "-q"]
    runner = CliRunner()
    res = runner.invoke(main, args + ["--steps", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, args + ["--steps", "2"])
    assert res.exit_code == 0, res.output
    meta = load_model(out).metadata["training"]
    assert meta["run_steps"] == 2 and "4 images" in meta["data"]
    bad = runner.invoke(main, ["train", "--out", str(tmp_path / "x.safetensors"), "--arch", "nope", "-q",
                               "--data", str(folder), "--steps", "1"])
    assert bad.exit_code == 1 and "unknown architecture" in bad.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_smoke(tmp_path, arch_json):
    meta = tr.train(tmp_path / "g.safetensors", {**FAST, "steps": 2}, arch=arch_json, images=_images(),
                    device="cuda", progress=False, log=lambda m: None)
    assert np.isfinite(meta["final_loss"]) and meta["device"].startswith("cuda")
