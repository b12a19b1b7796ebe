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


# ---- the official CIFAR-10 python archive -----------------------------------------------------------------------
import pickle  # noqa: E402
import struct  # noqa: E402
import tarfile  # noqa: E402
import warnings  # noqa: E402

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_rows(images):
    """(N, 32, 32, 3) -> (N, 3072): 1024 R then 1024 G then 1024 B, each 32x32 row-major (the official layout)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _py2_pickle(batch: dict) -> bytes:
    """The bytes Python 2's cPickle.dump(batch, f, 2) wrote for the official batches (str keys/values, 'data' an
    ndarray pickled by numpy 1.x), emitted opcode by opcode so the test does not depend on this Python's pickler."""
    def s(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v):
        return b"J" + struct.pack("<i", v)

    def value(v):
        if isinstance(v, bytes):
            return s(v)
        if isinstance(v, int):
            return i(v)
        if isinstance(v, list):
            return b"](" + b"".join(value(x) for x in v) + b"e"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
        return (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + s(b"b") + b"\x87R("
                + b"K\x01" + i(v.shape[0]) + i(v.shape[1]) + b"\x86"
                + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNN" + i(-1) + i(-1)
                + b"K\x00tb\x89" + s(v.tobytes()) + b"tb")

    body = b"".join(s(k) + value(v) for k, v in batch.items())
    return b"\x80\x02}(" + body + b"u."


def _cifar_batches(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for name in CIFAR_NAMES}


def _batch_dict(name, images):
    return {b"batch_label": f"{name} of 6".encode(), b"labels": [int(x) % 10 for x in range(len(images))],
            b"data": _cifar_rows(images), b"filenames": [f"img_{name}_{k}.png".encode() for k in range(len(images))]}


def _write_cifar(tmp_path, batches, serialize=None, skip=()):
    """Both forms: tmp/cifar-10-batches-py/ and tmp/cifar-10-python.tar.gz (members in the official's odd order)."""
    serialize = serialize or (lambda name, ims: _py2_pickle(_batch_dict(name, ims)))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, ims in batches.items():
        if name not in skip:
            (folder / name).write_bytes(serialize(name, ims))
    (folder / "batches.meta").write_bytes(_py2_pickle({b"label_names": [b"airplane"], b"num_vis": 3072}))
    (folder / "readme.html").write_text("<html></html>")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py", recursive=False)
        for name in ["data_batch_4", "readme.html", "test_batch", "data_batch_3", "batches.meta", "data_batch_2",
                     "data_batch_5", "data_batch_1"]:
            if (folder / name).exists():
                tar.add(folder / name, arcname=f"cifar-10-batches-py/{name}")
    return archive, folder


def test_py2_pickle_helper_is_a_real_numpy_pickle():
    images = _cifar_batches()["test_batch"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy 2 warns about the numpy.core alias
        batch = pickle.loads(_py2_pickle(_batch_dict("test_batch", images)), encoding="bytes")
    np.testing.assert_array_equal(batch[b"data"], _cifar_rows(images))
    assert batch[b"labels"] == [0, 1, 2] and batch[b"filenames"][0] == b"img_test_batch_0.png"


def test_cifar_archive_and_folder_splits(tmp_path):
    batches = _cifar_batches()
    archive, folder = _write_cifar(tmp_path, batches)
    train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    for src in (archive, folder, str(archive), str(folder)):
        np.testing.assert_array_equal(data.load_images(src), batches["test_batch"])  # default: the test batch
        np.testing.assert_array_equal(data.load_images(f"{src}::test"), batches["test_batch"])
        np.testing.assert_array_equal(data.load_images(f"{src}::train"), train)
        np.testing.assert_array_equal(data.load_images(src, split="train"), train)
        np.testing.assert_array_equal(data.load_images(f"{src}::all"), np.concatenate([train, batches["test_batch"]]))
        np.testing.assert_array_equal(data.load_images(f"{src}::data_batch_3"), batches["data_batch_3"])
        np.testing.assert_array_equal(data.load_images(f"{src}::train", limit=4), train[:4])
        np.testing.assert_array_equal(data.load_images(src, 32, limit=2), batches["test_batch"][:2])
    np.testing.assert_array_equal(data.load_images(folder / "data_batch_2"), batches["data_batch_2"])
    np.testing.assert_array_equal(data.load_cifar10_python(archive, "data_batch_5", limit=1),
                                  batches["data_batch_5"][:1])


def test_cifar_training_data_defaults_to_train(tmp_path):
    batches = _cifar_batches(3)
    archive, folder = _write_cifar(tmp_path, batches)
    train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    for src in (archive, folder):
        images, pool, desc = data.load_training_data(src, 32)
        np.testing.assert_array_equal(images, train)
        assert pool.tolist() == list(range(15)) and "15 images" in desc
        np.testing.assert_array_equal(data.load_training_data(f"{src}::test", 32)[0], batches["test_batch"])


def test_cifar_pixel_layout(tmp_path):
    """Row k of 'data': [R plane | G plane | B plane], each 32x32 row-major -> image[y, x, channel]."""
    row = np.zeros(3072, dtype=np.uint8)
    row[0], row[1], row[32], row[1024], row[2048 + 32 * 31 + 30] = 11, 12, 13, 21, 99
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(_py2_pickle({b"data": row[None].repeat(1, 0), b"labels": [3]}))
    image = data.load_images(folder)[0]
    assert image.shape == (32, 32, 3)
    assert (image[0, 0, 0], image[0, 1, 0], image[1, 0, 0], image[0, 0, 1], image[31, 30, 2]) == (11, 12, 13, 21, 99)
    assert int(image.astype(int).sum()) == 11 + 12 + 13 + 21 + 99


@pytest.mark.parametrize("form", ["bytes", "numpy-protocol4", "numpy-protocol5"])
def test_cifar_other_pickle_forms(tmp_path, form):
    """Python 3 re-pickles: 'data' as raw bytes, or as an ndarray pickled by this numpy (protocols 4 and 5)."""
    def serialize(name, ims):
        rows = _cifar_rows(ims)
        d = _batch_dict(name, ims)
        d[b"data"] = rows.tobytes() if form == "bytes" else rows
        return pickle.dumps(d, protocol=5 if form.endswith("5") else 4)

    batches = _cifar_batches(1)
    archive, folder = _write_cifar(tmp_path, batches, serialize)
    for src in (archive, folder):
        np.testing.assert_array_equal(data.load_images(f"{src}::train", limit=5),
                                      np.concatenate([batches["data_batch_1"], batches["data_batch_2"]])[:5])


class _Evil:
    def __reduce__(self):  # eval, not print: an imported Ray replaces builtins.print
        return (eval, ("print('pwned')",))


@pytest.mark.parametrize("payload, message", [
    ({b"data": _Evil()}, "refusing to unpickle builtins.eval"),
    ({b"data": np.zeros((1, 3072), dtype=object)}, "not uint8"),
    ({b"data": np.zeros((1, 3072), dtype=np.float32)}, "not uint8"),
    ({b"data": __import__("collections").OrderedDict()}, "refusing to unpickle collections.OrderedDict"),
    ([b"data"], "expected a dict"),
])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_refuses_foreign_pickles(tmp_path, payload, message, protocol, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(InputError, match=message if protocol > 2 else "refusing to unpickle _codecs.encode") as err:
        data.load_images(folder)
    assert "\n" not in str(err.value) and "test_batch" in str(err.value)
    assert "pwned" not in capsys.readouterr().out


def test_cifar_errors(tmp_path):
    batches = _cifar_batches(2)
    archive, folder = _write_cifar(tmp_path, batches, skip=("data_batch_4",))
    np.testing.assert_array_equal(data.load_images(archive), batches["test_batch"])  # test split is complete
    for src in (archive, folder):
        with pytest.raises(InputError, match="missing CIFAR-10 batch data_batch_4"):
            data.load_images(f"{src}::train")
        with pytest.raises(InputError, match="unknown CIFAR-10 split 'validation'"):
            data.load_images(f"{src}::validation")
        with pytest.raises(InputError, match="split 'test' in the path"):
            data.load_images(f"{src}::test", split="train")
    # truncated archive, garbage archive, corrupt member, wrong content, split on a non-CIFAR source
    raw = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 8])
    (tmp_path / "junk.tgz").write_bytes(b"not a tar at all")
    (folder / "test_batch").write_bytes(_py2_pickle(_batch_dict("test_batch", batches["test_batch"]))[:500])
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"labels": [1, 2]}, protocol=4))
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": b"\x00" * 100}, protocol=3))
    np.savez(tmp_path / "plain.npz", images=_rand_images(2))
    cases = [(tmp_path / "cut.tar.gz", "test_batch|cannot read archive"),
             (tmp_path / "junk.tgz", "cannot read archive"),
             (folder, "corrupt CIFAR-10 batch"), (f"{folder}::data_batch_1", "no 'data' key"),
             (f"{folder}::data_batch_2", "not a multiple of 3072"),
             (f"{tmp_path / 'plain.npz'}::train", "only to CIFAR"),
             (tmp_path / "absent.tar.gz", "no such file"), (f"{tmp_path / 'absent'}::train", "no such file")]
    for src, pattern in cases:
        with pytest.raises(InputError, match=pattern) as err:
            data.load_images(src)
        assert "\n" not in str(err.value)
