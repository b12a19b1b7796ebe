"""Shared pytest fixtures. Helpers that other test modules import live in ``ddpmcodec.testing``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddpmcodec.testing import make_tiny_model, tiny_unet_config as _tiny_unet_config

# ../shared beside the project root: read-only development material, absent on users' machines and some CI.
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
BOOTSTRAP_MODEL_DIR = SHARED_DIR / "models" / "ddpm-cifar10-ch64"

# Small CPU tests are dominated by per-op overhead; with several test runs sharing few cores, OpenMP thread barriers
# made them up to 300x slower (measured: a tiny forward 4 ms at 1 thread vs 1.2 s at 2 threads on a busy 2-core box).
torch.set_num_threads(int(os.environ.get("DDPMCODEC_TEST_THREADS", "1")))


# ---- models -------------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_unet_config():
    """UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8, dropout=0.0)."""
    return _tiny_unet_config(8)


@pytest.fixture
def tiny_model(tmp_path):
    """A seeded random tiny DiffusionModel (8x8, T=1000) saved to tmp and loaded back through load_model."""
    return make_tiny_model(tmp_path, resolution=8, seed=0)


# ---- shared material (skips cleanly when ../shared is absent) ------------------------------------------------------
@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} not present")
    return SHARED_DIR


@pytest.fixture(scope="session")
def bootstrap_model_path() -> Path:
    """The shared bootstrap weights (pytorch_diffusion layout), or skip."""
    path = BOOTSTRAP_MODEL_DIR / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for the module's tests (skipped when Ray is not installed), shut down afterwards."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
