"""Package the shared bootstrap DDPM as the bundled default model (our safetensors format).

    python -m eval.make_bundled_model --src /work/shared/models/ddpm-cifar10-ch64 \
        --out ddpmcodec/models/ddpm-cifar10-ch64.safetensors

Loads ``model.safetensors`` strictly with the architecture from the folder's ``config.json``, checks it against the
shapes, writes it with name, configs and a metadata summary (training recipe, the bootstrap's own bound on 256 dev
images), reloads the result and checks that eps and the identity are unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.network.model_io import load_model, save_model
from ddpmcodec.network.weight_layouts import infer_unet_config
from ddpmcodec.network.unet import UNetConfig, count_parameters

_ARCH_KEYS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "in_channels",
              "resolution", "resamp_with_conv")
_RECIPE_KEYS = ("optimizer", "lr", "betas", "eps", "warmup_steps", "warmup", "grad_clip_norm", "batch_size",
                "ema_decay", "dropout", "augmentation", "precision", "seed")


def training_summary(config: dict) -> dict:
    """The 'training' metadata entry: steps, data mix and recipe (no loss history)."""
    tr = config["training"]
    return {
        "steps": tr["steps_trained"],
        "weights": config.get("weights", "EMA (float32)"),
        "data": tr["data_mix"],
        "recipe": {k: tr[k] for k in _RECIPE_KEYS if k in tr},
        "final_loss": tr.get("final_loss"),
        "train_wall_seconds": tr.get("train_wall_seconds"),
        "device": config.get("device", {}).get("name"),
        "scripts": config.get("scripts"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, type=Path, help="bootstrap folder (config.json + model.safetensors)")
    ap.add_argument("--out", required=True, type=Path, help="output .safetensors path")
    ap.add_argument("--name", default="ddpm-cifar10-ch64")
    args = ap.parse_args(argv)

    src_dir = args.src if args.src.is_dir() else args.src.parent
    weights = src_dir / "model.safetensors" if args.src.is_dir() else args.src
    if not (src_dir / "config.json").is_file() or not weights.is_file():
        raise SystemExit(f"{args.src}: need a folder with config.json and model.safetensors")
    config = json.loads((src_dir / "config.json").read_text())
    unet_config = UNetConfig.from_dict({k: config["architecture"][k] for k in _ARCH_KEYS})
    d = config["diffusion"]
    diffusion = DiffusionConfig(T=d["T"], beta_schedule=d["beta_schedule"], beta_start=d["beta_start"],
                                beta_end=d["beta_end"])

    src = load_model(weights, unet_config=unet_config)  # strict load with the declared architecture
    inferred = infer_unet_config(src.net.state_dict())
    if {**inferred.to_dict(), "dropout": 0} != {**unet_config.to_dict(), "dropout": 0}:
        raise SystemExit(f"config.json architecture {unet_config} disagrees with the tensor shapes {inferred}")
    n_params = count_parameters(src.net)
    if n_params != config["architecture"]["n_params"]:
        raise SystemExit(f"parameter count {n_params} != config.json n_params {config['architecture']['n_params']}")

    metadata = {
        "description": config.get("description"),
        "n_params": n_params,
        "training": training_summary(config),
        "eval_dev256_summary": config["eval_dev256_summary"],
        "variance": config["diffusion"].get("model_var_type_for_eval_and_sampling"),
        "source": {"folder": src_dir.name, "file": weights.name},
    }
    save_model(args.out, src.net, unet_config, diffusion, args.name, metadata)

    out = load_model(args.out)
    x = torch.randn(4, 3, unet_config.resolution, unet_config.resolution, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 10, 500, 1000])
    if not torch.equal(src.eps(x, t), out.eps(x, t)) or out.identity != src.identity:
        raise SystemExit("round trip changed the model (eps or identity differ)")
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB): name={out.name} params={n_params} identity={out.identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
