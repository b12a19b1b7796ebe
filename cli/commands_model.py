"""`ddpmcodec train` and `ddpmcodec bound`: model training and the paper's variational bound (bits/dim)."""
from __future__ import annotations


import click

from cli.batch_mode import ray_option
from cli.common import (check_creatable_folder, input_path, quiet_option, resolve_device as _device,
                        show_progress as _progress)
from ddpmcodec.errors import InputError


@click.command()
@click.option("--out", "out", default="runs/train/model.safetensors", show_default=True,
              help="EMA weights file; its .train.pt sidecar makes reruns resume.")
@click.option("--init", default=None, help="Start from these weights (e.g. 'default', the bundled model).")
@click.option("--arch", default="cifar10-ch64", show_default=True,
              help="New model: preset (cifar10-ch64, cifar10-ch128, tiny) or UNetConfig JSON file.")
@click.option("--data", default=None, help="Training images: npz file or folder [default: shared CIFAR-10 pool].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Total optimizer steps of this run [800000].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [128].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam learning rate [2e-4].")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Linear warmup steps [5000].")
@click.option("--ema", type=click.FloatRange(0, 1), default=None, help="EMA decay [0.9999].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, help="Checkpoint interval [5000].")
@click.option("--sample-every", type=click.IntRange(min=0), default=None, help="Sample-grid interval, 0 = off [10000].")
@click.option("--sample-steps", type=click.IntRange(min=1), default=None, help="Ancestral steps per sample [T].")
@click.option("--n-samples", type=click.IntRange(min=1), default=None, help="Images per sample grid [64].")
@click.option("--log-every", type=click.IntRange(min=1), default=None, help="Loss logging interval [100].")
@click.option("--seed", type=int, default=None, help="Seed for init, data order, noise and dropout [0].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--name", default=None, help="Model name stored in the weights [--out file stem].")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle-based --init checkpoints (only if trusted).")
@quiet_option("No progress bar or messages.")
def train(out, init, arch, data, steps, batch_size, lr, warmup, ema, checkpoint_every, sample_every, sample_steps,
          n_samples, log_every, seed, device, name, allow_pickle, quiet):
    """Train a DDPM with the paper's recipe (L_simple, Adam, EMA, flips, clip 1), or resume --out.

    Writes the EMA weights to --out (safetensors) and the optimizer/raw-weights/RNG state to a .train.pt sidecar;
    running the same command again continues from it. Options left unset keep their stored (or default) values.
    """
    from pathlib import Path

    from ddpmcodec.network.training import train as run_train

    if Path(out).is_dir():
        raise InputError(f"{out} is a directory, expected a .safetensors file name")
    check_creatable_folder(Path(out).parent)
    if data is not None:
        input_path(data)
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "ema_decay": ema,
             "checkpoint_every": checkpoint_every, "sample_every": sample_every, "sample_steps": sample_steps,
             "n_samples": n_samples, "log_every": log_every, "seed": seed}
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    meta = run_train(out, {k: v for k, v in given.items() if v is not None}, init=init, arch=arch, data=data,
                     device=_device(device), name=name, allow_pickle=allow_pickle, progress=_progress(quiet), log=log)
    log(f"{out}: {meta['run_steps']} steps this run, {meta['steps']} in total, last loss {meta['final_loss']}")


@click.command()
@click.option("--model", "model_spec", default="default", show_default=True,
              help="Weights: 'default' (bundled), a .safetensors/.ckpt file or a diffusers folder.")
@click.option("--images", default=None, metavar="PATH",
              help="Folder, .npz, or CIFAR-10 python data (cifar-10-python.tar.gz or cifar-10-batches-py: test "
                   "batch; add ::train for the training batches) [default: the 500 CIFAR-10 dev test images].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@click.option("--t-samples", type=click.IntRange(min=1), default=None,
              help="Monte-Carlo: K random t per image (plus the exact decoder term) instead of all T.")
@click.option("--t-sampling", type=click.Choice(["importance", "stratified", "uniform"]), default="importance",
              show_default=True, help="How --t-samples draws t (all unbiased).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="(image, t) pairs per network call [64 on CPU, 1024 on CUDA].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Network precision on CUDA (fp32 runs with TF32 off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise and the t samples.")
@click.option("--out", "out_dir", default="runs/bound", show_default=True,
              help="Folder for the JSON (per-t terms) and the PNG plot.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle-based checkpoints (only if trusted).")
@ray_option
@click.option("--ray-batches", type=click.IntRange(min=1), default=16, show_default=True,
              help="Network batches (--batch-size pairs each) per Ray task.")
@quiet_option("No progress bar and no 'wrote' line.")
def bound(model_spec, images, limit, t_samples, t_sampling, batch_size, device, precision, seed, out_dir,
          allow_pickle, ray, ray_batches, quiet):
    """Variational bound in bits/dim as the official calc_bpd_loop: rate + distortion = total, vs the paper.

    With --ray the (image, t) pairs run as Ray tasks; the numbers equal a local run with one torch thread.
    Finished tasks are kept in --out/ray-parts until the JSON is written, so a rerun after a failure resumes.
    """
    from ddpmcodec.bound import format_report, run_bound

    from pathlib import Path

    if images is not None:
        from ddpmcodec.data import split_source

        input_path(split_source(images)[0])  # "archive.tar.gz::train": check the path without its split
    check_creatable_folder(Path(out_dir))
    device = _device(device)
    result, paths = run_bound(model_spec, images=images, limit=limit, out_dir=out_dir, device=device,
                              allow_pickle=allow_pickle, ray=ray, ray_batches=ray_batches, t_samples=t_samples,
                              t_sampling=t_sampling, seed=seed,
                              batch_size=batch_size or (1024 if device.startswith("cuda") else 64),
                              precision=precision, progress=_progress(quiet))
    click.echo(format_report(result.summary()))
    if paths and not quiet:
        click.echo("wrote " + ", ".join(str(p) for p in paths), err=True)


COMMANDS = [train, bound]
