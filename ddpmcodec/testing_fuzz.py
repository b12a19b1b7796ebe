"""Fuzzing helpers for the decoder and CLI (tests/test_fuzz_decoder.py): mutation recipes, crafted headers, and an
isolated decode worker (a subprocess with a memory limit and a per-request alarm).

Everything here works on the *public* API: files come from :func:`ddpmcodec.codec.progressive.encode`, headers from
:class:`ddpmcodec.container.header.Header` + :func:`ddpmcodec.container.header.pack`, and the only format knowledge
used is ``container.unpack(data).header_bytes`` (where the stored payload starts), so recipes survive format changes.
(One fallback knows format 3's ``container.blocks.stored_size``: finding the payload of a crafted file whose header
the parser refuses.)

A *recipe* (JSON) describes a test file without storing its bytes:

* mutant: ``{"kind": "mutant", "source": "lossless", "ops": [{"op": "delete", "at": 3, "anchor": "payload", "n": 3}]}``
  ops: flip (xor one byte), set (overwrite bytes), delete (n bytes), insert (bytes), duplicate (n bytes in place),
  truncate (keep ``len`` bytes), splice (this file up to ``at`` + another source from ``from``), append (bytes).
  Offsets are relative to an anchor: ``start`` (default), ``payload`` (first payload byte) or ``end`` (negative ok);
  they are clamped into the file, so a recipe never fails to apply.
* crafted: ``{"kind": "crafted", "base": "lossless", "fields": {"width": 65536, ...},
  "payload": {"declared": null | N, "keep": null | N, "fill": "source" | "zeros" | "ones"}}``: the base file's
  Header with those fields replaced, packed with checks that verify, then cut to the first ``keep`` payload bytes
  (``declared`` payload bytes, at most MAX_DECLARED, are built: the source's payload zero-padded, or zeros / 0xFF).
  Crafted recipes may also carry ``ops`` (applied to the packed file), e.g. a plain truncation to 153 bytes.

Run as ``python -m ddpmcodec.testing_fuzz worker MODEL MEM_LIMIT_BYTES TIMEOUT_S`` for the worker loop.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ANCHORS = ("start", "payload", "end")


# ---- mutation recipes ----------------------------------------------------------------------------------------------
def payload_start(data: bytes) -> int:
    """Where the payload begins, according to the container parser (falls back to 0 for unparsable data)."""
    from ddpmcodec.container import header as container
    from ddpmcodec.errors import CodecError

    try:
        return container.unpack(data).header_bytes
    except CodecError:
        return 0


def _offset(data: bytes, op: dict, key: str = "at", base_payload: int | None = None) -> int:
    at = int(op.get(key, 0))
    anchor = op.get("anchor", "start")
    if anchor == "payload":
        at += payload_start(data) if base_payload is None else base_payload
    elif anchor == "end":
        at += len(data)
    elif anchor != "start":
        raise ValueError(f"unknown anchor {anchor!r}")
    return max(0, min(len(data), at))


def apply_op(data: bytes, op: dict, sources: dict[str, bytes], base_payload: int | None = None) -> bytes:
    kind = op["op"]
    at = _offset(data, op, base_payload=base_payload)
    if kind == "flip":
        if not data:
            return data
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ (int(op.get("xor", 1)) & 0xFF or 1)]) + data[at + 1:]
    if kind == "set":
        new = bytes.fromhex(op["bytes"])
        return data[:at] + new + data[at + len(new):]
    if kind == "delete":
        return data[:at] + data[at + int(op.get("n", 1)):]
    if kind == "insert":
        return data[:at] + bytes.fromhex(op["bytes"]) + data[at:]
    if kind == "duplicate":
        return data[:at] + data[at: at + int(op.get("n", 1))] + data[at:]
    if kind == "truncate":
        return data[: _offset(data, {"at": op["len"], "anchor": op.get("anchor", "start")},
                              base_payload=base_payload)]
    if kind == "splice":
        other = sources[op["other"]]
        start = _offset(other, {"at": op.get("from", 0), "anchor": op.get("from_anchor", "start")})
        return data[:at] + other[start:]
    if kind == "append":
        return data + bytes.fromhex(op["bytes"])
    raise ValueError(f"unknown op {kind!r}")


def apply_ops(data: bytes, ops: list[dict], sources: dict[str, bytes]) -> bytes:
    """Apply ops in order; "payload" anchors refer to the payload start of the *original* file."""
    base_payload = payload_start(data)
    for op in ops:
        data = apply_op(data, op, sources, base_payload)
    return data


# ---- crafted headers -----------------------------------------------------------------------------------------------
MAX_DECLARED = 1 << 22  # crafted payloads are built in full (then cut), so their declared size is bounded


def _unpack_with_model(data: bytes, model_id: bytes | None, tile: int | None):
    """container.unpack, verified against the model where the API takes one (format 3), else plain (format 2)."""
    from ddpmcodec.container import header as container

    if model_id is not None:
        try:
            return container.unpack(data, model_id=model_id, tile=tile)
        except TypeError:
            pass
    return container.unpack(data)


def craft_file(base: bytes, fields: dict, payload: dict | None = None, model_id: bytes | None = None,
               tile: int | None = None) -> bytes:
    """The base file's header with `fields` replaced, packed with valid checks; see the module docstring.
    model_id/tile: the decoding model's codec identity and resolution (needed to read a format-3 header in full).
    Raises ValueError when pack() refuses the fields or the declared payload is too large to build."""
    from ddpmcodec.container import header as container

    payload = dict(payload or {})
    parsed = _unpack_with_model(base, model_id, tile)
    hdr = dataclasses.replace(parsed.header, **{k: (bytes.fromhex(v) if k == "model_id" else v)
                                                for k, v in fields.items()})
    src = parsed.payload
    declared = payload.get("declared")
    declared = len(src) if declared is None else int(declared)
    if declared > MAX_DECLARED:
        raise ValueError(f"declared payload {declared} too large to build")
    keep = payload.get("keep")
    keep = declared if keep is None else max(0, min(int(keep), declared))
    fill = payload.get("fill", "source")
    if fill == "source":
        body = src[:declared] + bytes(max(0, declared - len(src)))
    else:
        body = {"zeros": b"\0", "ones": b"\xff"}[fill] * declared
    data = container.pack(dataclasses.replace(hdr, payload_bytes=declared), body)
    if keep == declared:
        return data
    # a prefix holding `keep` payload bytes: cut where the parser says the payload starts (+ stored block checks,
    # if any, are simply cut along with it)
    return data[: _payload_offset(data, declared, model_id, tile) + keep]


def _payload_offset(data: bytes, declared: int, model_id: bytes | None, tile: int | None) -> int:
    """Where the stored payload of a just-packed complete file starts (even when the parser refuses its header)."""
    from ddpmcodec.container import header as container
    from ddpmcodec.errors import CodecError

    try:
        return _unpack_with_model(data, model_id, tile).header_bytes
    except CodecError:
        blocks = getattr(container, "blocks", None)  # format 3 stores block checks inside the payload
        stored = blocks.stored_size(declared) if blocks is not None else declared
        return len(data) - stored


def build_file(recipe: dict, sources: dict[str, bytes], model_id: bytes | None = None,
               tile: int | None = None) -> bytes:
    if recipe["kind"] == "mutant":
        return apply_ops(sources[recipe["source"]], recipe.get("ops", []), sources)
    if recipe["kind"] == "crafted":
        data = craft_file(sources[recipe["base"]], recipe.get("fields", {}), recipe.get("payload"), model_id, tile)
        return apply_ops(data, recipe.get("ops", []), sources)
    raise ValueError(f"unknown recipe kind {recipe['kind']!r}")


# ---- frames --------------------------------------------------------------------------------------------------------
def digest(pixels) -> str:
    """Identity of an image: shape + bytes."""
    import numpy as np

    a = np.ascontiguousarray(pixels)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:24]


def png_digest(path: str | Path) -> str:
    """digest() of a PNG the CLI wrote, as (H, W, 3) uint8 (grayscale expanded to equal R=G=B)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return digest(arr.astype(np.uint8))


# ---- the worker ----------------------------------------------------------------------------------------------------
class _Alarm(BaseException):
    """Raised by SIGALRM; a BaseException so that library `except Exception` cannot swallow it."""


def _vm_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _serve(model_path: str, mem_limit: int, timeout: float) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    from ddpmcodec.codec.decoding import decode_progressive
    from ddpmcodec.codec.stop_points import step_table, truncate
    from ddpmcodec.errors import CodecError
    from ddpmcodec.network.model_io import load_model

    model = load_model(model_path)
    if mem_limit > 0:
        limit = _vm_bytes() + mem_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(signum, frame):
        raise _Alarm()

    signal.signal(signal.SIGALRM, on_alarm)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the reply channel
    for line in sys.stdin:
        req = json.loads(line)
        data = base64.b64decode(req["data"])
        reply: dict = {"frames": []}
        signal.setitimer(signal.ITIMER_REAL, float(req.get("timeout", timeout)))
        try:
            if req["op"] == "decode":
                for step in decode_progressive(data, model, stop_at_t=req.get("stop_at_t"),
                                               stop_at_bytes=req.get("stop_at_bytes")):
                    reply["frames"].append([int(step.t), int(step.bytes_read), digest(step.pixels)])
            elif req["op"] == "table":
                parsed, table = step_table(data, model)
                reply["table"] = [[e.index, e.t, e.bytes, e.raw_bytes] for e in table]
                reply["complete"] = bool(parsed.complete)
            elif req["op"] == "truncate":
                new = truncate(data, model, stop_at_t=req.get("stop_at_t"), stop_at_bytes=req.get("stop_at_bytes"))
                reply["data"] = base64.b64encode(new).decode()
            else:
                raise ValueError(f"unknown op {req['op']!r}")
            reply["status"] = "ok"
        except _Alarm:
            reply.update(status="timeout", type="timeout", msg=f"no result within {req.get('timeout', timeout)} s")
        except CodecError as exc:
            reply.update(status="codec_error", type=type(exc).__name__, msg=str(exc))
        except BaseException as exc:  # noqa: BLE001 - everything else is what the fuzzer looks for
            reply.update(status="exception", type=type(exc).__name__, msg=str(exc)[:500],
                         tb=traceback.format_exc()[-3000:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.write(json.dumps(reply) + "\n")
        out.flush()


class DecodeWorker:
    """A long-lived ``python -m ddpmcodec.testing_fuzz worker`` subprocess; restarted after a crash or hang."""

    def __init__(self, model_path: str | Path, mem_limit: int = 2 << 30, timeout: float = 10.0):
        self.model_path, self.mem_limit, self.timeout = str(model_path), mem_limit, timeout
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ddpmcodec.testing_fuzz", "worker", self.model_path, str(self.mem_limit),
             str(self.timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env, cwd=str(Path(__file__).resolve().parents[1]))

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def request(self, op: str, data: bytes, timeout: float | None = None, **kw) -> dict:
        """Reply dict: status ok | codec_error | exception | timeout | crashed (worker died / stopped answering)."""
        timeout = self.timeout if timeout is None else timeout
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        proc = self.proc
        req = dict(kw, op=op, data=base64.b64encode(data).decode(), timeout=timeout)
        try:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            return self._crashed("worker died before the request")
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        # startup (torch import, model load) + the alarm + slack for C code that ignores the alarm
        ready = sel.select(timeout=timeout * 2 + 60)
        sel.close()
        if not ready:
            return self._crashed(f"no answer within {timeout * 2 + 60:.0f} s (hang in native code?)")
        line = proc.stdout.readline()
        if not line:
            return self._crashed(f"worker died (exit status {proc.wait()})")
        return json.loads(line)

    def _crashed(self, msg: str) -> dict:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.restarts += 1
        return {"status": "crashed", "type": "crashed", "msg": msg, "frames": []}


# ---- the CLI -------------------------------------------------------------------------------------------------------
def run_cli(args: list[str], timeout: float = 90.0, mem_limit: int = 3 << 30) -> dict:
    """``python -m cli.main ARGS`` in a subprocess (1 thread, address space limited); rc None on timeout."""
    import resource

    def limit():
        if mem_limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                             timeout=timeout, env=env, preexec_fn=limit,
                             cwd=str(Path(__file__).resolve().parents[1]))
        return {"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr,
                "seconds": time.perf_counter() - start}
    except subprocess.TimeoutExpired as exc:
        return {"rc": None, "stdout": exc.stdout or "", "stderr": f"timeout after {timeout} s",
                "seconds": time.perf_counter() - start}


def one_line_error(res: dict) -> bool:
    lines = [ln for ln in (res["stdout"] + res["stderr"]).strip().splitlines() if ln.strip()]
    return res["rc"] == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        _serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m ddpmcodec.testing_fuzz worker MODEL MEM_LIMIT_BYTES TIMEOUT_S")
