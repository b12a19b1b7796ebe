"""The official CIFAR-10 python archive, read directly: ``cifar-10-python.tar.gz`` (or .tgz/.tar, read in one pass
without extracting), its extracted ``cifar-10-batches-py/`` folder, or one batch file.

Get it from https://www.cs.toronto.edu/~kriz/cifar.html. Each batch is a pickle dict whose b'data' is a
(N, 3072) uint8 array (1024 R, then G, then B values per image, row-major 32x32). The pickles are read with a
restricted unpickler: only plain containers and a stand-in for numpy's array reconstruction are allowed, and no
code from the file ever runs. Splits: ``test`` (test_batch, 10,000 images in official order; the default),
``train`` (data_batch_1..5), ``all``, or one batch name; choose one with ``path::split`` or ``split=``.
"""
from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ddpmcodec.errors import InputError, one_line

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_BATCHES = CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,)
CIFAR_SPLITS = {"test": (CIFAR_TEST_BATCH,), "train": CIFAR_TRAIN_BATCHES, "all": CIFAR_BATCHES,
                **{name: (name,) for name in CIFAR_BATCHES}}
CIFAR_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_SEP = "::"


# ---- the official CIFAR-10 python archive ---------------------------------------------------------------------
class _NdarrayStub:
    """Stands in for numpy.ndarray while unpickling: collects (shape, dtype, raw bytes), runs no numpy code."""

    def __init__(self, *args):
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise InputError("unexpected array state in pickle")
        _version, shape, dtype, fortran, raw = state
        if not (isinstance(dtype, _DtypeStub) and dtype.is_uint8):
            raise InputError("pickled array is not uint8")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InputError("bad pickled array shape")
        if isinstance(raw, list):  # object arrays pickle as lists: never CIFAR data
            raise InputError("pickled object array refused")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != int(np.prod(shape, dtype=np.int64)):
            raise InputError("pickled array data does not match its shape")
        arr = np.frombuffer(raw, dtype=np.uint8)
        self.array = (arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape))


class _DtypeStub:
    """Stands in for numpy.dtype while unpickling; only uint8 ('u1') is accepted later."""

    def __init__(self, name=b"", align=False, copy=False):
        name = name.decode("latin-1") if isinstance(name, (bytes, bytearray)) else name
        self.is_uint8 = name in ("u1", "|u1", "uint8", "B")

    def __setstate__(self, state):
        pass


def _reconstruct_stub(cls, shape=None, typecode=None):
    if cls is not _NdarrayStub:
        raise InputError("pickle reconstructs something other than an array")
    return _NdarrayStub()


def _frombuffer_stub(buf, dtype, shape, order="C"):
    stub = _NdarrayStub()
    stub.__setstate__((1, tuple(shape), dtype, order == "F", bytes(buf)))
    return stub


_PICKLE_ALLOWED = {
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "bytes"): bytes,
    ("builtins", "str"): str, ("builtins", "int"): int,
    ("__builtin__", "dict"): dict, ("__builtin__", "list"): list, ("__builtin__", "str"): bytes,
    ("__builtin__", "int"): int,
    # numpy arrays (the official files hold b'data' as a pickled ndarray): harmless stand-ins, never numpy itself
    ("numpy", "ndarray"): _NdarrayStub, ("numpy", "dtype"): _DtypeStub,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_stub,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_stub,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer_stub,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer_stub,
}


class _CifarUnpickler(pickle.Unpickler):
    """Only dicts, lists, bytes, str, ints and uint8 arrays (through the stubs above); anything else: InputError."""

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise InputError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch") from None

    def persistent_load(self, pid):
        raise InputError("refusing a pickle with persistent ids: not a CIFAR-10 batch")


def _unpickle_cifar_batch(stream, what: str) -> np.ndarray:
    """One CIFAR-10 batch pickle -> (N, 32, 32, 3) uint8 (rows: 1024 R, 1024 G, 1024 B, each 32x32 row-major)."""
    try:
        batch = _CifarUnpickler(stream, encoding="bytes").load()
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    except Exception as exc:  # corrupt/truncated pickle or gzip stream: any of a dozen exception types
        raise InputError(f"{what}: corrupt CIFAR-10 batch ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(batch, dict):
        raise InputError(f"{what}: not a CIFAR-10 batch (pickle holds {type(batch).__name__}, expected a dict)")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch:
        raise InputError(f"{what}: not a CIFAR-10 batch (no 'data' key; keys {sorted(map(str, batch))})")
    raw = batch["data"]
    if isinstance(raw, _NdarrayStub):
        raw = raw.array
    elif isinstance(raw, (bytes, bytearray)):
        if len(raw) % 3072:
            raise InputError(f"{what}: 'data' has {len(raw)} bytes, not a multiple of 3072")
        raw = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3072)
    if not isinstance(raw, np.ndarray) or raw.ndim != 2 or raw.shape[1] != 3072:
        raise InputError(f"{what}: 'data' is not an (N, 3072) uint8 array")
    labels = batch.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(raw)):
        raise InputError(f"{what}: {len(raw)} images but labels do not match")
    return np.ascontiguousarray(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def split_source(source: str | Path) -> tuple[Path, str | None]:
    """``"path::split"`` -> (Path(path), split); a plain path (or one that exists with '::' in it) -> (path, None)."""
    text = os.fspath(source)
    if SPLIT_SEP in text and not Path(text).exists():
        path, _, split = text.rpartition(SPLIT_SEP)
        return Path(path), split
    return Path(text), None


def is_cifar10_python(path: str | Path) -> bool:
    """True for a CIFAR-10 python archive (by name), its extracted folder, or one batch file of it."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in CIFAR_BATCHES)
    name = path.name.lower()
    return name.endswith(CIFAR_TAR_SUFFIXES) or (path.name in CIFAR_BATCHES and path.is_file())


def load_cifar10_python(path: str | Path, split: str | None = None, limit: int | None = None) -> np.ndarray:
    """CIFAR-10 images from the official python version -> (N, 32, 32, 3) uint8, in the official order.

    path: ``cifar-10-python.tar.gz`` (members are read straight from the archive, nothing is extracted; any
    ``.tar.gz``/``.tgz``/``.tar`` whose batch files are named as in the official one), the extracted folder
    ``cifar-10-batches-py/``, or a single batch file (``.../test_batch``, ``.../data_batch_3``). Get the archive
    from https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 python version", 163 MB).

    split: ``"test"`` (default: ``test_batch``, the 10,000 test images as numbered officially), ``"train"``
    (``data_batch_1`` .. ``data_batch_5`` in that order, 50,000 images), ``"all"`` (train then test) or one batch
    name (``"data_batch_1"`` .. ``"data_batch_5"``, ``"test_batch"``). Every command's ``--images`` accepts it as a
    suffix: ``--images cifar-10-python.tar.gz::train``. limit: only the first ``limit`` images of the split.

    The batches are pickles: they are read with a restricted unpickler that accepts only dicts, lists, bytes,
    str, ints and uint8 arrays (rebuilt from their raw bytes without calling numpy); anything else raises a
    one-line InputError, as do missing or corrupt members.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    if path.is_file() and path.name in CIFAR_BATCHES and not path.name.lower().endswith(CIFAR_TAR_SUFFIXES):
        if split not in (None, path.name):
            raise InputError(f"{path} is the single batch {path.name}; it has no split {split!r}")
        with open(path, "rb") as f:
            images = _unpickle_cifar_batch(f, str(path))
        return images if limit is None else images[:limit]
    split = "test" if split is None else split
    if split not in CIFAR_SPLITS:
        raise InputError(f"unknown CIFAR-10 split {split!r}: use one of {', '.join(CIFAR_SPLITS)}")
    names = CIFAR_SPLITS[split]
    parts, count = [], 0
    if path.is_dir():
        for name in names:
            if limit is not None and count >= limit:
                break
            member = path / name
            if not member.is_file():
                raise InputError(f"{path}: missing CIFAR-10 batch {name}")
            with open(member, "rb") as f:
                parts.append(_unpickle_cifar_batch(f, str(member)))
            count += len(parts[-1])
    else:
        found: dict[str, np.ndarray] = {}

        def enough() -> bool:  # the batches needed so far, in official order, are all loaded (or cover limit)
            n = 0
            for name in names:
                if name not in found:
                    return False
                n += len(found[name])
                if limit is not None and n >= limit:
                    return True
            return True

        try:  # one sequential pass over the (gzip) stream: no seeking back, nothing written to disk
            with tarfile.open(path, "r:*") as tar:
                for info in tar:
                    base = info.name.rsplit("/", 1)[-1]
                    if info.isfile() and base in names and base not in found:
                        found[base] = _unpickle_cifar_batch(tar.extractfile(info), f"{path}:{info.name}")
                        if enough():
                            break
        except InputError:
            raise
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InputError(f"cannot read archive {path}: {one_line(exc)}") from None
        for name in names:
            if limit is not None and count >= limit:
                break
            if name not in found:
                raise InputError(f"{path}: missing CIFAR-10 batch {name} in the archive")
            parts.append(found[name])
            count += len(found[name])
    if not parts:  # limit=0
        return np.zeros((0, 32, 32, 3), dtype=np.uint8)
    images = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return images if limit is None else images[:limit]
