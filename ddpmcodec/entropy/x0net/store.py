"""Saving and loading the learned x_0 layer (safetensors; its config and the diffusion model it belongs to travel in
the metadata). A layer sits beside its diffusion model as `<model file stem>.x0.safetensors` and is loaded with it.

Its identity is a SHA-256 over the config and the integer tensors; the codec folds it into its model identity, so a
file coded with one layer never decodes with another.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpmcodec.entropy.x0net.integer import IntegerX0Net
from ddpmcodec.entropy.x0net.model import X0NetConfig, conv_names
from ddpmcodec.errors import InputError, one_line

FORMAT_TAG = "ddpmcodec-x0layer/1"
SUFFIX = ".x0.safetensors"


@dataclass
class X0Layer:
    """A loaded layer: the integer network, the diffusion model identity it was trained for, its own identity."""

    net: IntegerX0Net
    model_identity: str
    identity: str
    summary: dict

    @property
    def t_end(self) -> int:
        return self.net.cfg.t_end


def layer_identity(net: IntegerX0Net) -> str:
    h = hashlib.sha256(FORMAT_TAG.encode() + b"\0" + net.cfg.to_json().encode())
    for name in conv_names(net.cfg):
        for t in net.weights[name]:
            h.update(name.encode() + str(tuple(t.shape)).encode() + t.to(torch.int64).numpy().astype("<i8").tobytes())
    return h.hexdigest()[:32]


def sidecar_path(model_path: Path) -> Path:
    """Where a model file's x_0 layer lives: model.safetensors -> model.x0.safetensors."""
    return model_path.with_name(model_path.name.split(".")[0] + SUFFIX)


def save(net: IntegerX0Net, path: Path, model_identity: str, summary: dict | None = None) -> None:
    tensors = {}
    for name in conv_names(net.cfg):
        w, b = net.weights[name]
        tensors[f"{name}.weight"] = w.to(torch.int32).contiguous()
        tensors[f"{name}.bias"] = b.contiguous()
    meta = {"format": FORMAT_TAG, "config": net.cfg.to_json(), "model_identity": model_identity,
            "identity": layer_identity(net), "summary": json.dumps(summary or {}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors creates 0600 files; weights are not secret
    tmp.replace(path)


def load(path: Path) -> X0Layer:
    """Read and validate a layer file; every failure is an InputError with a one-line reason."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT_TAG:
                raise InputError(f"{path.name}: not a ddpmcodec x_0 layer (format {meta.get('format')!r})")
            cfg = X0NetConfig.from_json(meta["config"])
            names = conv_names(cfg)
            if set(f.keys()) != {f"{n}.{p}" for n in names for p in ("weight", "bias")}:
                raise InputError(f"{path.name}: x_0 layer tensors do not match its config")
            weights = {n: (f.get_tensor(f"{n}.weight").to(torch.int64), f.get_tensor(f"{n}.bias").to(torch.int64))
                       for n in names}
        net = IntegerX0Net(cfg, weights)
        summary = json.loads(meta.get("summary", "{}"))
    except InputError:
        raise
    except Exception as exc:  # safetensors, JSON and shape errors: one line, never a traceback
        raise InputError(f"{path.name}: cannot read the x_0 layer ({one_line(exc)})") from None
    identity = layer_identity(net)
    if meta.get("identity") not in (None, identity):
        raise InputError(f"{path.name}: content hash {identity} does not match the stored {meta['identity']}; "
                         "file is corrupt")
    return X0Layer(net, meta.get("model_identity", ""), identity, summary)
