"""Image-set loading: folders, npz files (plain and JPEG blobs), the shared CIFAR-10 files."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ddpmcodec import data
from ddpmcodec.errors import InputError


def _rand_images(n, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _write_folder(folder, images, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"img{i:03d}.{ext}")
    return folder


def _jpeg_blob(images, quality=90):
    blobs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return np.concatenate(blobs), offsets


def test_folder_png_roundtrip_sorted(tmp_path):
    images = _rand_images(5)
    folder = _write_folder(tmp_path / "imgs", images)
    (folder / "notes.txt").write_text("not an image")
    loaded, names = data.load_image_folder(folder, 8, return_names=True)
    assert loaded.dtype == np.uint8 and loaded.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(loaded, images)
    assert names == [f"img{i:03d}.png" for i in range(5)]
    np.testing.assert_array_equal(data.load_images(folder, limit=2), images[:2])


def test_folder_converts_modes_and_formats(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(_rand_images(1)[0]).convert("RGBA").save(folder / "a.png")
    Image.fromarray(_rand_images(1)[0][..., 0]).save(folder / "b.png")  # greyscale
    Image.fromarray(_rand_images(1)[0]).save(folder / "c.webp", lossless=True)
    Image.fromarray(_rand_images(1)[0]).save(folder / "d.jpg")
    loaded = data.load_image_folder(folder)
    assert loaded.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(loaded[1, ..., 0], loaded[1, ..., 2])


def test_folder_size_checks_and_resize(tmp_path):
    folder = _write_folder(tmp_path / "big", _rand_images(2, 12, 16))
    with pytest.raises(InputError, match="expected 8x8"):
        data.load_image_folder(folder, 8)
    resized = data.load_image_folder(folder, 8, resize=True)
    assert resized.shape == (2, 8, 8, 3)
    _write_folder(tmp_path / "big", _rand_images(1, 8, 8), ext="bmp")
    with pytest.raises(InputError, match="pass a resolution"):
        data.load_image_folder(folder)


def test_center_crop_resize_identity_on_square():
    im = _rand_images(1, 10, 8)[0]
    out = data.center_crop_resize(im, 8)
    np.testing.assert_array_equal(out, im[1:9])


@pytest.mark.parametrize("make", ["missing", "empty", "corrupt"])
def test_folder_errors(tmp_path, make):
    folder = tmp_path / "f"
    if make != "missing":
        folder.mkdir()
    if make == "corrupt":
        (folder / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError):
        data.load_image_folder(folder)


def test_npz_images_and_jpeg_blob(tmp_path):
    images = _rand_images(3)
    np.savez(tmp_path / "plain.npz", images=images)
    np.testing.assert_array_equal(data.load_npz_images(tmp_path / "plain.npz"), images)
    smooth = np.repeat(np.repeat(_rand_images(3, 2, 2), 4, axis=1), 4, axis=2)
    blob, offsets = _jpeg_blob(smooth, quality=95)
    np.savez(tmp_path / "jpeg.npz", jpeg_bytes=blob, offsets=offsets)
    decoded = data.load_images(tmp_path / "jpeg.npz")
    assert decoded.shape == (3, 8, 8, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - smooth).mean() < 12
    assert len(data.load_npz_images(tmp_path / "jpeg.npz", limit=2)) == 2


def test_npz_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        data.load_npz_images(tmp_path / "nope.npz")
    np.savez(tmp_path / "wrong.npz", pixels=_rand_images(1))
    with pytest.raises(InputError, match="expected key"):
        data.load_npz_images(tmp_path / "wrong.npz")
    np.savez(tmp_path / "float.npz", images=_rand_images(1).astype(np.float32))
    with pytest.raises(InputError, match="uint8"):
        data.load_npz_images(tmp_path / "float.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError):
        data.load_npz_images(tmp_path / "junk.npz")
    blob, offsets = _jpeg_blob(_rand_images(2))
    with pytest.raises(InputError, match="offsets"):
        data.decode_jpeg_blob(blob, offsets + 10**6)
    with pytest.raises(InputError, match="corrupt JPEG"):
        data.decode_jpeg_blob(np.zeros_like(blob), offsets)


def test_default_shared_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(data.SHARED_ENV, str(tmp_path))
    assert data.default_shared_dir() == tmp_path
    with pytest.raises(InputError, match="missing shared data file"):
        data.load_dev_set()
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / data.DEV_FILE, images=_rand_images(4))
    assert data.load_dev_set(limit=3).shape == (3, 8, 8, 3)
    monkeypatch.setenv(data.SHARED_ENV, str(tmp_path / "absent"))
    assert data.default_shared_dir() is None
    with pytest.raises(InputError, match="shared data folder not found"):
        data.load_dev_set()


def test_training_data_from_folder(tmp_path):
    folder = _write_folder(tmp_path / "train", _rand_images(3, 16, 16))
    images, pool, desc = data.load_training_data(folder, 8)
    assert images.shape == (3, 8, 8, 3) and pool.tolist() == [0, 1, 2] and "3 images" in desc


# ---- the shared CIFAR-10 files (skipped without ../shared) -----------------------------------------------------
def test_shared_dev_set(shared_dir):
    dev = data.load_dev_set(shared_dir=shared_dir)
    assert dev.shape == (500, 32, 32, 3) and dev.dtype == np.uint8
    np.testing.assert_array_equal(data.load_dev_set(limit=7, shared_dir=shared_dir), dev[:7])


def test_shared_train_pool(shared_dir):
    images, pool = data.load_cifar_train_pool(shared_dir, limit=20)
    assert images.shape == (40, 32, 32, 3)
    assert len(pool) == 60 and np.bincount(pool).tolist() == [1] * 20 + [2] * 20
    jpeg = images[:20].astype(int)
    assert 20 < jpeg.mean() < 235 and jpeg.std() > 10  # decoded photos, not blank


def test_training_data_without_shared(tmp_path, monkeypatch):
    monkeypatch.setenv(data.SHARED_ENV, str(tmp_path / "absent"))
    with pytest.raises(InputError, match="pass --data"):
        data.load_training_data(None, 32)
