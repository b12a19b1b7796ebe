"""Training a DDPM eps-model with the paper's recipe (notes §1), resumable, plus ancestral sampling.

Recipe: L_simple = |eps - eps_theta(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t)|^2 with t uniform on 1..T, Adam (lr 2e-4,
linear warmup), batch 128, EMA of the weights, dropout from the U-Net config, random horizontal flips, gradient
clipping at norm 1; bf16 autocast and channels_last on CUDA only.

Files written for ``--out run/model.safetensors``:

* ``run/model.safetensors``: the **EMA** weights via :func:`ddpmcodec.model_io.save_model` (pickle-free), with a
  ``training`` metadata entry (total steps, this run's steps, data, recipe, init model, loss, wall time).
* ``run/model.train.pt``: the training state for resuming: ``{"format", "step", "net" (raw weights), "optimizer",
  "rng" (tensors), "config", "data", "init", "wall_seconds", "loss"}``, written by ``torch.save`` and read with
  ``torch.load(weights_only=True)`` (tensors and plain containers only: loading it cannot run code).
* ``run/model.train_log.txt`` (one line per log interval) and ``run/model.samples-<step>.png`` grids.

Running the same command again resumes from the state file; ``steps`` counts this run's optimizer steps in total.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ddpmcodec.diffusion import DiffusionConfig, Schedule, prior_mean, q_sample_batched, to_pixels
from ddpmcodec.errors import InputError
from ddpmcodec.network.unet import UNet, UNetConfig

STATE_FORMAT = "ddpmcodec-train-state/1"
ARCH_PRESETS = ("cifar10-ch64", "cifar10-ch128", "tiny")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper values by default) and bookkeeping intervals, in optimizer steps."""

    steps: int = 800_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    hflip: bool = True
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    checkpoint_every: int = 5000
    sample_every: int = 10000
    sample_steps: int | None = None  # None: all T ancestral steps
    n_samples: int = 64
    log_every: int = 100

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    def recipe(self) -> dict:
        """The settings that define the optimisation (stored in the weights file's metadata)."""
        return {"loss": "L_simple", "optimizer": "Adam", "lr": self.lr, "betas": list(self.adam_betas),
                "eps": self.adam_eps, "warmup_steps": self.warmup, "warmup": "linear", "batch_size": self.batch_size,
                "ema_decay": self.ema_decay, "grad_clip_norm": self.grad_clip,
                "augmentation": "random horizontal flip p=0.5" if self.hflip else "none", "seed": self.seed}


def architecture(spec: str, resolution: int = 32) -> UNetConfig:
    """A U-Net config from a preset name (:data:`ARCH_PRESETS`) or a JSON file of ``UNetConfig.to_dict()``."""
    import json

    if spec == "cifar10-ch128":
        return UNetConfig(ch=128, resolution=resolution, attn_resolutions=(resolution // 2,))
    if spec == "cifar10-ch64":
        return UNetConfig(ch=64, resolution=resolution, attn_resolutions=(resolution // 2,))
    if spec == "tiny":
        return UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(resolution // 2,),
                          resolution=resolution, dropout=0.1)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"unknown architecture {spec!r}: use one of {ARCH_PRESETS} or a UNetConfig JSON file")
    try:
        return UNetConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a valid UNetConfig JSON ({exc})") from None


def state_path(out: str | Path) -> Path:
    """The training-state sidecar of a weights file: ``x/model.safetensors`` -> ``x/model.train.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".train.pt")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup to cfg.lr over cfg.warmup steps."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


# ---- sampling ---------------------------------------------------------------------------------------------------
def timestep_sequence(T: int, steps: int | None = None) -> list[int]:
    """Descending 1-based timesteps from T to 1 (all of them, or ``steps`` evenly spaced ones)."""
    if steps is None or steps >= T:
        return list(range(T, 0, -1))
    if steps < 1:
        raise ValueError("steps must be >= 1")
    return sorted({int(v) for v in np.round(np.linspace(1, T, steps))}, reverse=True)


def sample_images(eps_fn: Callable, sched: Schedule, n: int, shape: tuple[int, int, int], *, steps: int | None = None,
                  seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 256,
                  progress: bool = False) -> np.ndarray:
    """Ancestral DDPM sampling with 'fixedlarge' variance and clipped x^_0 (official sampler); uint8 (n, H, W, C).

    eps_fn(x (B,C,H,W), t (B,) 1-based int64) -> eps. With ``steps`` < T, strided skips t -> s use the skip posterior
    mean and 1 - ab_t/ab_s variance (Schedule.prior_mean/prior_variance). Image i's noise comes from its own
    generator seeded by (seed, i), so the samples do not depend on ``batch_size``.
    """
    ts = timestep_sequence(sched.T, steps)
    out = []
    with tqdm(total=n * len(ts), disable=not progress, unit="eval", desc="sample", dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(b)]  # per image
            randn = lambda: torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device)  # noqa
            x = randn()
            for i, t in enumerate(ts):
                s = ts[i + 1] if i + 1 < len(ts) else 0
                with torch.no_grad():
                    eps = eps_fn(x, torch.full((b,), t, dtype=torch.long, device=device)).float()
                mean = prior_mean(sched, x, eps, t, s, clip=True)
                if s == 0:
                    x = mean
                else:
                    std = math.sqrt(sched.prior_variance(t, s, "fixedlarge"))
                    x = mean + std * randn()
                bar.update(b)
            out.append(to_pixels(x).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def sample(model, n: int, *, steps: int | None = None, seed: int = 0, batch_size: int = 256,
           progress: bool = False) -> np.ndarray:
    """n samples (n, H, W, C) uint8 from a loaded :class:`DiffusionModel` at its config resolution."""
    c, r = model.unet_config.in_channels, model.unet_config.resolution
    return sample_images(model.eps, Schedule(model.diffusion), n, (c, r, r), steps=steps, seed=seed,
                         device=model.device, batch_size=batch_size, progress=progress)


def save_grid(images: np.ndarray, path: str | Path, pad: int = 2) -> Path:
    """Tile uint8 images (n, H, W, 3) into a near-square PNG grid with ``pad`` white pixels between them."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)
    return Path(path)


# ---- training -------------------------------------------------------------------------------------------------
def _init_from(init, allow_pickle: bool, device) -> tuple[dict, UNetConfig, DiffusionConfig, dict]:
    from ddpmcodec.network.model_io import load_model

    model = load_model(init, device="cpu", allow_pickle=allow_pickle)
    prev = model.metadata.get("training") or {}
    info = {"spec": str(init), "name": model.name, "identity": model.identity, "steps": int(prev.get("steps") or 0),
            "training": prev or None}
    return model.net.state_dict(), model.unet_config, model.diffusion, info


def train(out: str | Path, overrides: dict | None = None, *, init: str | Path | None = None, arch: str = "cifar10-ch64",
          data: str | Path | None = None, images: np.ndarray | None = None, device: str = "cpu",
          name: str | None = None, allow_pickle: bool = False, diffusion: DiffusionConfig | None = None,
          progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) and write ``out`` (EMA weights) + its state sidecar; returns the 'training' metadata.

    overrides: TrainConfig fields given explicitly; on resume they replace the stored ones (e.g. a larger ``steps``).
    init: model spec to start from (fresh optimizer, weights and EMA copied); arch: preset or JSON for a new model.
    data: None/'cifar10' (shared CIFAR-10 pool), an npz or a folder; ``images`` (N,H,W,3) uint8 overrides ``data``.
    """
    from ddpmcodec.data import load_training_data
    from ddpmcodec.network.model_io import load_model

    out, spath = Path(out), state_path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out must end in .safetensors, got {out}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    if spath.exists():
        if init is not None:
            raise InputError(f"{spath} exists: drop --init to resume it, or choose another --out")
        state = torch.load(spath, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise InputError(f"{spath}: not a {STATE_FORMAT} training state")
        ema_model = load_model(out, device="cpu")
        meta = ema_model.metadata.get("training") or {}
        if meta.get("run_steps") != state["step"]:
            raise InputError(f"{out} (step {meta.get('run_steps')}) and {spath} (step {state['step']}) disagree")
        cfg = TrainConfig.from_dict({**state["config"], **(overrides or {})})
        ucfg, dcfg, init_info = ema_model.unet_config, ema_model.diffusion, state["init"]
        net_sd, ema_sd, name = state["net"], ema_model.net.state_dict(), name or ema_model.name
        log(f"resuming {out} at step {state['step']}")
    else:
        state, cfg = None, TrainConfig.from_dict(overrides or {})
        if init is not None:
            net_sd, ucfg, dcfg, init_info = _init_from(init, allow_pickle, dev)
            ema_sd = net_sd
        else:
            ucfg, dcfg, init_info = architecture(arch), diffusion or DiffusionConfig(), None
            net_sd = ema_sd = None
        name = name or out.stem
    if images is not None:
        pool_images, pool, data_desc = np.asarray(images, dtype=np.uint8), np.arange(len(images)), "given array"
    else:
        pool_images, pool, data_desc = load_training_data(data, ucfg.resolution)
    if pool_images.shape[1:] != (ucfg.resolution, ucfg.resolution, ucfg.in_channels):
        raise InputError(f"training images {pool_images.shape[1:]} do not fit the model ({ucfg.resolution}px)")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        return _train_loop(out, spath, cfg, ucfg, dcfg, name, init_info, state, net_sd, ema_sd, pool_images, pool,
                           data_desc, dev, progress, log)


def _train_loop(out, spath, cfg, ucfg, dcfg, name, init_info, state, net_sd, ema_sd, pool_images, pool, data_desc,
                dev, progress, log) -> dict:
    from ddpmcodec.network.model_io import save_model

    cuda = dev.type == "cuda"
    torch.manual_seed(cfg.seed)  # parameter init and dropout (inside fork_rng: the caller's RNG is untouched)
    net = UNet(ucfg)
    if net_sd is not None:
        net.load_state_dict(net_sd)
    ema = UNet(ucfg)
    ema.load_state_dict(ema_sd if ema_sd is not None else net.state_dict())
    net.to(dev).train()
    ema.to(dev).eval().requires_grad_(False)
    if cuda:
        net.to(memory_format=torch.channels_last)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)
    step, wall, last_loss = 0, 0.0, None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        data_gen.set_state(state["rng"]["data"])
        noise_gen.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], dev)
        step, wall, last_loss = state["step"], state["wall_seconds"], state.get("loss")
    sched = Schedule(dcfg)
    imgs = torch.as_tensor(pool_images).to(dev)
    pool_t = torch.as_tensor(pool, dtype=torch.long)
    init_steps = (init_info or {}).get("steps", 0)
    log_path = out.with_name(out.stem + ".train_log.txt")

    def metadata() -> dict:
        return {"training": {"steps": init_steps + step, "run_steps": step, "init": init_info,
                             "weights": "EMA (float32)", "data": data_desc, "recipe": cfg.recipe(),
                             "final_loss": last_loss, "train_wall_seconds": round(wall, 1), "device": str(dev),
                             "trainer": "ddpmcodec.training", "state_file": spath.name}}

    def checkpoint() -> None:
        save_model(out, {k: v.cpu() for k, v in ema.state_dict().items()}, ucfg, dcfg, name, metadata())
        rng = {"data": data_gen.get_state(), "noise": noise_gen.get_state(), "torch": torch.get_rng_state()}
        if cuda:
            rng["cuda"] = torch.cuda.get_rng_state(dev)
        blob = {"format": STATE_FORMAT, "step": step, "net": {k: v.cpu() for k, v in net.state_dict().items()},
                "optimizer": opt.state_dict(), "rng": rng, "config": cfg.to_dict(), "data": data_desc,
                "init": init_info, "wall_seconds": wall, "loss": last_loss}
        tmp = spath.with_name(spath.name + ".tmp")
        torch.save(blob, tmp)
        tmp.replace(spath)

    def samples() -> None:
        eps_fn = lambda x, t: ema(x, t - 1)  # noqa: E731
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            grid = sample_images(eps_fn, sched, cfg.n_samples, (ucfg.in_channels, ucfg.resolution, ucfg.resolution),
                                 steps=cfg.sample_steps, seed=cfg.seed, device=dev)
        log(f"wrote {save_grid(grid, out.with_name(f'{out.stem}.samples-{step:07d}.png'))}")

    out.parent.mkdir(parents=True, exist_ok=True)
    loss_sum, gn_sum, n_sum, t_last = torch.zeros((), device=dev), torch.zeros((), device=dev), 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, unit="step", desc="train", dynamic_ncols=True)
    try:
        while step < cfg.steps:
            idx = pool_t[torch.randint(len(pool_t), (cfg.batch_size,), generator=data_gen)]
            t = torch.randint(1, sched.T + 1, (cfg.batch_size,), generator=data_gen)
            flip = torch.rand(cfg.batch_size, generator=data_gen) < 0.5
            x0 = imgs[idx.to(dev)].permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if cfg.hflip:
                x0 = torch.where(flip.to(dev).view(-1, 1, 1, 1), x0.flip(3), x0)
            noise = torch.randn(x0.shape, generator=noise_gen, device=dev)
            xt = q_sample_batched(sched, x0, t, noise)
            if cuda:
                xt = xt.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                pred = net(xt, (t - 1).to(dev))
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)
            step += 1
            loss_sum += loss.detach()
            gn_sum += gnorm.detach()
            n_sum += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                wall += now - t_last
                last_loss = float(loss_sum) / n_sum
                rate = n_sum / max(now - t_last, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.4f}", steps_s=f"{rate:.2f}")
                with open(log_path, "a") as f:
                    f.write(f"step {step} loss {last_loss:.5f} gradnorm {float(gn_sum) / n_sum:.4f} "
                            f"lr {lr_at(step - 1, cfg):.3e} steps/s {rate:.2f} wall {wall:.0f}s\n")
                loss_sum.zero_(), gn_sum.zero_()
                n_sum, t_last = 0, now
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
            if cfg.sample_every > 0 and (step % cfg.sample_every == 0 or step == cfg.steps):
                samples()
                t_last = time.perf_counter()
    finally:
        bar.close()
    if state is not None and state["step"] == step:
        log(f"{out} already at step {step} (raise --steps to continue)")
    return metadata()["training"]
