"""Loading and saving DDPM weights: our safetensors format, pytorch_diffusion state dicts, diffusers folders.

Every model, whatever layout it came from, is loaded *strictly* into :class:`ddpmcodec.unet.UNet` and gets an
``identity``: the first 32 hex chars of a SHA-256 over its canonical content (tensors sorted by our parameter name,
each hashed as name, dtype, shape and float32 little-endian bytes, then the JSON of the U-Net and diffusion configs).
The same weights therefore have the same identity in every layout. Failures raise :class:`InputError` with a one-line
message; nothing from torch or safetensors escapes as a traceback.
"""
from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ddpmcodec.diffusion import DiffusionConfig, net_timestep
from ddpmcodec.entropy.x0net import store as x0_store
from ddpmcodec.entropy.x0net.store import X0Layer
from ddpmcodec.errors import InputError, one_line
from ddpmcodec.network.device_calls import FixedShapeCalls
from ddpmcodec.network.exact_unet import GridUNet
from ddpmcodec.parallel import intra_op_threads, map_one_thread_each
from ddpmcodec.network.unet import UNet, UNetConfig
from ddpmcodec.network.weight_layouts import diffusers_to_pytorch_diffusion, infer_unet_config, unet_config_from_diffusers

FORMAT_TAG = "ddpmcodec-model/1"
DEFAULT_MODEL = "default"
BUNDLED_MODEL_NAME = "ddpm-cifar10-ch64"
BUNDLED_MODEL_FILE = f"{BUNDLED_MODEL_NAME}.safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_IDENTITY_TAG = b"ddpmcodec-identity/1\0"
REPRODUCIBLE_GROUP = 16  # samples per CPU network call in eps_reproducible: part of the codecs' numerics
DEVICE_GROUP = 32  # samples per network call on other devices, always padded to this shape (see eps_device_groups)


@dataclass
class DiffusionModel:
    """A loaded eps-model plus the configs it was trained with. ``net`` is in eval mode on ``device``."""

    net: UNet
    unet_config: UNetConfig
    diffusion: DiffusionConfig
    name: str
    identity: str
    metadata: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    x0_layer: X0Layer | None = None  # learned x_0 layer trained for this model (its sidecar file), if any
    _fixed_calls: FixedShapeCalls | None = field(default=None, init=False, repr=False, compare=False)
    _grid_net: GridUNet | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def x0_layer_identity(self) -> str | None:
        """Identity of the learned x_0 layer (None without one): part of the codec identity and of result keys."""
        return self.x0_layer.identity if self.x0_layer is not None else None

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predicted noise (B, C, H, W) float32 for x_t (B, C, H, W) at 1-based t (int or (B,) tensor)."""
        T = self.diffusion.T
        if isinstance(t, torch.Tensor):
            lo, hi = int(t.min()), int(t.max())
            if t.dim() != 1 or t.shape[0] != x.shape[0] or lo < 1 or hi > T:
                raise ValueError(f"t must be a ({x.shape[0]},) tensor of 1-based steps in 1..{T}")
            steps = net_timestep(t.to(self.device))
        elif isinstance(t, numbers.Integral):
            steps = self._steps(t, x.shape[0])
        else:
            raise TypeError(f"t must be an int or a tensor, got {type(t).__name__}")
        with torch.inference_mode():
            return self.net(x.to(self.device, torch.float32), steps)

    def _steps(self, t: int, batch: int) -> torch.Tensor:
        """(batch,) 0-based network timesteps on the model's device for a 1-based int t (ValueError outside 1..T)."""
        if not 1 <= int(t) <= self.diffusion.T:
            raise ValueError(f"t must be in 1..{self.diffusion.T}, got {t}")
        return net_timestep(int(t), batch).to(self.device)

    def eps_reproducible(self, x: torch.Tensor, t: int, workers: int | None = None) -> torch.Tensor:
        """:meth:`eps` for x (B, C, H, W) at one t, returned on x's device, with outputs that do not depend on the
        machine's core count.

        CPU kernels split reductions by thread count and pick algorithms by batch size, so the same input can give
        last-digit differences; codecs whose probabilities depend on network outputs need identical results. So
        the batch is cut into fixed groups of REPRODUCIBLE_GROUP samples, each evaluated on one CPU thread; groups
        run concurrently on up to torch.get_num_threads() worker threads (identical results for any count; the
        caller's thread setting is restored). Other devices: :meth:`eps_device_groups`.
        """
        if self.device.type != "cpu":
            return self.eps_device_groups(x, t).to(x.device)
        groups = [x[i:i + REPRODUCIBLE_GROUP] for i in range(0, len(x), REPRODUCIBLE_GROUP)]
        outs = map_one_thread_each(lambda g: self.eps(g, t), groups, workers or torch.get_num_threads())
        return torch.cat(outs).to(x.device)

    def eps_device_groups(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """:meth:`eps` on a non-CPU device in calls of exactly DEVICE_GROUP samples (the last one padded with
        zeros): (B, C, H, W) float32 on the model's device.

        Every call has the same shape and runs under network.device_calls' numerics (TF32 off, deterministic
        cuDNN; a CUDA graph on CUDA), so a sample's output depends neither on how many samples came with it nor,
        on the GPUs eval.gpu_check has checked, on which samples share its call: batch coding pools the tiles of
        many images (ddpmcodec.batch.lockstep) and still writes the single-image files byte for byte.
        """
        steps = self._steps(t, DEVICE_GROUP)
        if self._fixed_calls is None or self._fixed_calls.device != self.device:
            self._fixed_calls = FixedShapeCalls(self.net, self.device)
        x = x.to(self.device, torch.float32)
        outs = []
        for i in range(0, len(x), DEVICE_GROUP):
            g = x[i:i + DEVICE_GROUP]
            n = len(g)
            if n < DEVICE_GROUP:
                g = torch.cat([g, g.new_zeros((DEVICE_GROUP - n, *g.shape[1:]))])
            outs.append(self._fixed_calls(g.contiguous(), steps)[:n])
        return torch.cat(outs) if outs else x.new_zeros(x.shape)

    def eps_exact(self, x: torch.Tensor, t: int, workers: int | None = None) -> torch.Tensor:
        """:meth:`eps` on integer grids (network.exact_unet): (B, C, H, W) float32 on x's device, bit-identical on
        every machine, device, thread count and batch split, so on the CPU the whole batch runs at once on
        `workers` intra-op threads (default: torch's setting), for speed only."""
        steps = self._steps(t, len(x))
        if self._grid_net is None:
            self._grid_net = GridUNet(self.net)
        xd = x.to(self.device)
        if self.device.type != "cpu":
            return self._grid_net(xd, steps).to(x.device)
        with intra_op_threads(workers or torch.get_num_threads()):
            return self._grid_net(xd, steps).to(x.device)

    def numerics_digest(self, ts: tuple[int, ...] = (10, 500)) -> str:
        """16 hex chars of SHA-256 over :meth:`eps_reproducible`'s float32 outputs on fixed inputs (one
        REPRODUCIBLE_GROUP of counter-based normals per t in ``ts``).

        Machines (device, torch build, CPU kernels) that give the same digest evaluated this network identically
        on those inputs; the exact x_0 layer of a lossless file needs the encoder's numerics, so a decoder whose
        digest differs from the encoder machine's should expect the checksum refusal rather than exact pixels.
        """
        from ddpmcodec.channel import counter_rng

        c, r = self.unet_config.in_channels, self.unet_config.resolution
        h = hashlib.sha256()
        for t in ts:
            x = counter_rng.normals(t, 0, REPRODUCIBLE_GROUP * c * r * r, device=self.device)
            out = self.eps_reproducible(x.reshape(REPRODUCIBLE_GROUP, c, r, r), t).cpu()
            h.update(np.ascontiguousarray(out.numpy(), dtype="<f4").data)
        return h.hexdigest()[:16]

    def to(self, device: str | torch.device) -> "DiffusionModel":
        """Move the network to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        self.net.to(self.device)
        self._fixed_calls = self._grid_net = None  # graphs, buffers and grid weights belong to the old device
        return self


# ---- identity -----------------------------------------------------------------------------------------------------
def _identity_config(unet_config: UNetConfig, diffusion_config: DiffusionConfig) -> str:
    """Canonical JSON of what determines the function: dropout is left out, attention given as effective levels."""
    u = unet_config.to_dict()
    del u["dropout"]
    u["attn_resolutions"] = [unet_config.resolution // 2**i for i in unet_config.attn_levels]
    return json.dumps({"unet": u, "diffusion": diffusion_config.to_dict()}, sort_keys=True, separators=(",", ":"))


def compute_identity(state_dict: dict, unet_config: UNetConfig, diffusion_config: DiffusionConfig) -> str:
    """32-hex-char content hash of a state dict in our (pytorch_diffusion) naming plus the configs."""
    h = hashlib.sha256(_IDENTITY_TAG)
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}\0float32\0{list(t.shape)}\0".encode())
        h.update(np.ascontiguousarray(t.numpy(), dtype="<f4").data)
    h.update(_identity_config(unet_config, diffusion_config).encode())
    return h.hexdigest()[:32]


# ---- saving -------------------------------------------------------------------------------------------------------
def save_model(
    path: str | Path,
    net_or_state_dict: nn.Module | dict,
    unet_config: UNetConfig,
    diffusion_config: DiffusionConfig,
    name: str,
    metadata: dict | None = None,
) -> Path:
    """Write float32 weights plus configs (JSON in the safetensors header) in our format; returns the path."""
    sd = net_or_state_dict.state_dict() if isinstance(net_or_state_dict, nn.Module) else net_or_state_dict
    net = _build_strict(sd, unet_config, source="save_model")  # refuse to write a file we could not load
    tensors = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    header = {
        "ddpmcodec.format": FORMAT_TAG,
        "name": str(name),
        "unet_config": json.dumps(unet_config.to_dict()),
        "diffusion_config": json.dumps(diffusion_config.to_dict()),
        "metadata": json.dumps(metadata or {}),
        "identity": compute_identity(tensors, unet_config, diffusion_config),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.chmod(0o644)  # safetensors creates 0600 files; weights are not secret
    tmp.replace(path)
    return path


# ---- loading ------------------------------------------------------------------------------------------------------
def resolve_model_path(spec: str | Path = DEFAULT_MODEL) -> Path:
    """'default' (or the bundled model's name) -> the bundled file; anything else must be an existing path."""
    if str(spec) in (DEFAULT_MODEL, BUNDLED_MODEL_NAME):
        path = Path(str(resources.files("ddpmcodec.models").joinpath(BUNDLED_MODEL_FILE)))
        if not path.is_file():
            raise InputError(f"bundled model {BUNDLED_MODEL_FILE} is missing; run `python -m eval.make_bundled_model`")
        return path
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"model not found: {spec} (expected 'default', a .safetensors/.ckpt/.pt/.pth file or a diffusers folder)"
        )
    return path


def load_model(
    spec: str | Path = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    unet_config: UNetConfig | None = None,
) -> DiffusionModel:
    """Load a model strictly from ``spec`` (see module doc); ``unet_config`` overrides the stored/inferred one."""
    path = resolve_model_path(spec)
    src = _read_folder(path, allow_pickle) if path.is_dir() else _read_file(path, allow_pickle)
    cfg = unet_config or src["unet_config"]
    net = _build_strict(src["state_dict"], cfg, source=path.name)
    identity = compute_identity(net.state_dict(), cfg, src["diffusion"])
    stored = src.get("identity")
    if stored and stored != identity and unet_config is None:
        raise InputError(f"{path.name}: content hash {identity} does not match the stored {stored}; file is corrupt")
    dev = torch.device(device)
    net.requires_grad_(False).to(dev).eval()
    return DiffusionModel(net, cfg, src["diffusion"], src["name"], identity, src["metadata"], dev,
                          _sidecar_layer(path, identity))


def _sidecar_layer(model_path: Path, identity: str) -> X0Layer | None:
    """The learned x_0 layer beside the model file (x0net.store.sidecar_path), checked to belong to this model."""
    path = x0_store.sidecar_path(model_path)
    if not path.is_file():
        return None
    layer = x0_store.load(path)
    if layer.model_identity != identity:
        raise InputError(f"{path.name} is an x_0 layer for model {layer.model_identity or '(unknown)'}, not for "
                         f"{model_path.name} ({identity}); remove it or retrain it for this model")
    return layer


def _json_field(header: dict, key: str, path: Path):
    try:
        return json.loads(header[key])
    except (KeyError, ValueError) as e:
        raise InputError(f"{path.name}: bad or missing '{key}' in the model header ({one_line(e)})") from None


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            # clone: own (aligned) memory, so rewriting the file later cannot change a loaded model
            return {k: f.get_tensor(k).clone() for k in f.keys()}, header
    except Exception as e:  # safetensors raises several unrelated types for corrupt files
        raise InputError(f"cannot read {path.name}: not a valid safetensors file ({one_line(e)})") from None


def _read_pickle(path: Path, allow_pickle: bool) -> dict:
    if not allow_pickle:
        raise InputError(f"{path.name} is a pickle-based checkpoint, which can run code when loaded; "
                         "pass --allow-pickle (allow_pickle=True) only if you trust it")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"cannot read {path.name}: {one_line(e)}") from None
    for key in ("state_dict", "model", "ema"):  # common wrappers around a plain state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and "conv_in.weight" not in obj:
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path.name}: does not contain a state dict of tensors")
    return obj


def _foreign(sd: dict, path: Path, header: dict | None = None) -> dict:
    """Wrap a pytorch_diffusion-layout state dict (config inferred from shapes)."""
    if any(k.startswith("module.") for k in sd) and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "time_embedding.linear_1.weight" in sd:
        raise InputError(f"{path.name}: diffusers weights need their config.json; pass the folder instead")
    if "temb.dense.0.weight" not in sd:
        raise InputError(f"{path.name}: unknown weights layout (neither ddpmcodec, pytorch_diffusion nor diffusers)")
    stem = path.parent.name if path.stem in ("model", "diffusion_pytorch_model") else path.stem
    meta = {"source": {"layout": "pytorch_diffusion", "file": path.name, "header": header or {}}}
    return dict(state_dict=sd, unet_config=infer_unet_config(sd), diffusion=DiffusionConfig(), name=stem, metadata=meta)


def _read_file(path: Path, allow_pickle: bool) -> dict:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _foreign(_read_pickle(path, allow_pickle), path)
    if suffix != ".safetensors":
        raise InputError(f"{path.name}: unsupported model file type {suffix!r} (use .safetensors, .ckpt, .pt, .pth)")
    sd, header = _read_safetensors(path)
    fmt = header.get("ddpmcodec.format")
    if fmt is None:
        return _foreign(sd, path, header)
    if fmt != FORMAT_TAG:
        raise InputError(f"{path.name}: unsupported model format {fmt!r} (this version reads {FORMAT_TAG})")
    try:
        unet_cfg = UNetConfig.from_dict(_json_field(header, "unet_config", path))
        diff_cfg = DiffusionConfig.from_dict(_json_field(header, "diffusion_config", path))
    except (TypeError, ValueError) as e:
        raise InputError(f"{path.name}: invalid config in the model header ({one_line(e)})") from None
    return dict(state_dict=sd, unet_config=unet_cfg, diffusion=diff_cfg, name=header.get("name", path.stem),
                metadata=_json_field(header, "metadata", path), identity=header.get("identity"))


def _read_folder(path: Path, allow_pickle: bool) -> dict:
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if (unet_dir / "config.json").is_file():
        try:
            cfg = json.loads((unet_dir / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{unet_dir / 'config.json'}: unreadable ({one_line(e)})") from None
        if "block_out_channels" in cfg:
            return _read_diffusers(path, unet_dir, cfg, allow_pickle)
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return _read_file(files[0], allow_pickle)
    raise InputError(f"{path}: not a diffusers UNet2DModel folder and holds {len(files)} .safetensors files, not 1")


def _read_diffusers(path: Path, unet_dir: Path, cfg: dict, allow_pickle: bool) -> dict:
    unet_cfg = unet_config_from_diffusers(cfg)
    st, binf = unet_dir / "diffusion_pytorch_model.safetensors", unet_dir / "diffusion_pytorch_model.bin"
    if st.is_file():
        raw, _ = _read_safetensors(st)
    elif binf.is_file():
        raw = _read_pickle(binf, allow_pickle)
    else:
        raise InputError(f"{unet_dir}: no diffusion_pytorch_model.safetensors or .bin (sharded files unsupported)")
    sd = diffusers_to_pytorch_diffusion(raw, len(unet_cfg.ch_mult))
    diffusion = DiffusionConfig()
    for cand in (path / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json",
                 unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            diffusion = _diffusion_from_scheduler(cand)
            break
    meta = {"source": {"layout": "diffusers", "folder": path.name, "config": cfg}}
    return dict(state_dict=sd, unet_config=unet_cfg, diffusion=diffusion, name=path.name, metadata=meta)


def _diffusion_from_scheduler(path: Path) -> DiffusionConfig:
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({one_line(e)})") from None
    if s.get("beta_schedule", "linear") != "linear" or s.get("trained_betas") is not None:
        raise InputError(f"{path}: only the linear beta schedule is supported")
    return DiffusionConfig(T=int(s.get("num_train_timesteps", 1000)), beta_schedule="linear",
                           beta_start=float(s.get("beta_start", 1e-4)), beta_end=float(s.get("beta_end", 0.02)))


# ---- strict construction ------------------------------------------------------------------------------------------
def _build_strict(sd: dict, cfg: UNetConfig, source: str) -> UNet:
    """UNet(cfg) holding exactly the tensors of ``sd`` (float32); InputError on any key/shape/dtype mismatch."""
    try:
        with torch.device("meta"):
            net = UNet(cfg)
    except ValueError as e:
        raise InputError(f"{source}: invalid U-Net config ({one_line(e)})") from None
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise InputError(f"{source}: weights do not match the U-Net config: {', '.join(parts)} tensors")
    for k, ref in expected.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise InputError(f"{source}: tensor {k} is not floating point")
        if tuple(v.shape) != tuple(ref.shape):
            raise InputError(f"{source}: shape mismatch for {k}: file {tuple(v.shape)}, model {tuple(ref.shape)}")
    weights = {k: sd[k].detach().to("cpu", torch.float32).contiguous() for k in expected}
    bad = next((k for k, v in weights.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InputError(f"{source}: tensor {bad} holds NaN or infinite values")
    try:
        net.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise InputError(f"{source}: {one_line(e)}") from None
    return net.eval()
