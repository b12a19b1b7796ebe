"""Feature cache for x0_layer_feasibility: per image x_t ~ q(x_t|x_0) (one draw, fixed seed) and the U-Net's
clipped x^_0 at t, stored as float32 (N,3,32,32) in /tmp. Usage: python eval/experiments/x0_features.py T SET N
SET in {train, dev}. Train = lossless training originals (first N); dev = dev images 0..N-1."""
import os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch
torch.set_num_threads(1)
from ddpmcodec.network.model_io import load_model
from ddpmcodec.diffusion import Schedule, predict_x0, q_sample
from ddpmcodec.data import load_dev_set

def main():
    t, which, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    imgs = (np.load('/work/shared/data/cifar10-train-lossless.npz')['images'] if which == 'train'
            else load_dev_set(n))[:n]
    model = load_model("default")
    sched = Schedule(model.diffusion)
    g = torch.Generator().manual_seed(1000 * t + (0 if which == 'train' else 7))
    xts, x0hs = [], []
    t0 = time.time()
    with torch.no_grad():
        for b in range(0, n, 64):
            x0 = torch.as_tensor(imgs[b:b + 64]).permute(0, 3, 1, 2).float() / 127.5 - 1
            xt = q_sample(sched, x0, t, torch.randn(x0.shape, generator=g))
            x0h = predict_x0(sched, xt, model.eps(xt, t), t).clamp(-1, 1)
            xts.append(xt.numpy()); x0hs.append(x0h.numpy())
            print(b, time.time() - t0, flush=True)
    np.save(f'/tmp/x0f_{which}_t{t}_xt.npy', np.concatenate(xts))
    np.save(f'/tmp/x0f_{which}_t{t}_x0h.npy', np.concatenate(x0hs))
    np.save(f'/tmp/x0f_{which}_t{t}_x0.npy', imgs)

if __name__ == '__main__':
    main()
