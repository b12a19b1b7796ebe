"""Feasibility measurement: can a small learned causal model of x_0 given x_{t_end} beat the exact x_0 layer
(ddpmcodec.entropy.pixelmodel)? Measurement only; nothing here is used by the codec.

Features come from eval/experiments/x0_features.py (one unbiased draw x_t ~ q(x_t|x_0) per image, x^_0 = the
U-Net's clipped x0 prediction at t). Training/validation: the 5,085 lossless training originals (last 585 held out);
dev images 0..23 only for the final numbers.

Model: PixelCNN-style masked convolutions over the residual r = x_0 - (x^_0+1)*127.5 (grey levels), R->G->B
channel order inside a pixel, raster order across pixels; non-causal conditioning on x^_0 and x_t through a small
ordinary conv stack added to every layer. Output per sub-pixel: a K-component mixture of discretized logistics
over the 256 pixel values (edge bins to +-inf), located at x^_0 + predicted offset. NLL measured in float64 =
the ideal code length (bits/dim); no parameter bits (the weights would be fixed in the codec).

Usage: python eval/experiments/x0_layer_feasibility.py baseline T   |   train T SECONDS
"""
import os, sys, time, math, json
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1)

N_VAL = 585
K = 3       # mixture components
WIDTH = 48  # hidden channels (multiple of 3)
LAYERS = 5  # masked 3x3 B layers after the 5x5 A layer


def load(which, t):
    p = f'/tmp/x0f_{which}_t{t}_'
    return np.load(p + 'x0.npy'), np.load(p + 'xt.npy'), np.load(p + 'x0h.npy')


def baseline(t):
    from ddpmcodec.entropy import pixelmodel
    out = {}
    for which in ('train', 'dev'):
        x0, xt, x0h = load(which, t)
        idx = range(len(x0) - N_VAL, len(x0)) if which == 'train' else range(len(x0))
        t0, bits = time.time(), []
        for i in idx:
            rows = pixelmodel.mean_rows(torch.as_tensor(x0h[i:i + 1]), 32, 32)
            bits.append(pixelmodel.code_length_bits(x0[i], rows, pixelmodel.fit(x0[i], rows)) / 3072)
        out['val' if which == 'train' else 'dev'] = float(np.mean(bits))
        print(which, t, len(bits), 'images', np.mean(bits), 'bits/dim', f'{time.time() - t0:.1f}s', flush=True)
    json.dump(out, open(f'/tmp/x0f_baseline_t{t}.json', 'w'))


def mask(out_ch, in_ch, k, kind, in_groups=True, out_groups=True):
    """Causal mask (out, in, k, k): pixels above / left are visible; at the centre, output group g sees input
    groups < g (kind A) or <= g (kind B). Channels are grouped R,G,B by index modulo 3."""
    m = torch.zeros(out_ch, in_ch, k, k)
    c = k // 2
    m[:, :, :c, :] = 1
    m[:, :, c, :c] = 1
    go = torch.arange(out_ch) % 3
    gi = torch.arange(in_ch) % 3
    ok = (gi[None, :] < go[:, None]) if kind == 'A' else (gi[None, :] <= go[:, None])
    m[:, :, c, c] = ok.float()
    return m


class MConv(nn.Conv2d):
    def __init__(self, cin, cout, k, kind):
        super().__init__(cin, cout, k, padding=k // 2)
        self.register_buffer('m', mask(cout, cin, k, kind))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.m, self.bias, padding=self.padding)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        W = WIDTH
        self.cond = nn.Sequential(nn.Conv2d(6, W, 3, padding=1), nn.GELU(), nn.Conv2d(W, W, 3, padding=1), nn.GELU())
        self.cond_proj = nn.ModuleList([nn.Conv2d(W, W, 1) for _ in range(LAYERS + 1)])
        self.inp = MConv(3, W, 5, 'A')
        self.hid = nn.ModuleList([MConv(W, W, 3, 'B') for _ in range(LAYERS)])
        # outputs: for each channel c, 3K numbers (logit, loc, logscale) at indices with index % 3 == c
        self.out = MConv(W, 9 * K, 1, 'B')

    def forward(self, r, xt, x0h):
        """r: residual / 8 (B,3,H,W); returns (B,3,3K,H,W) raw mixture parameters per channel."""
        c = self.cond(torch.cat([xt, x0h], 1))
        h = F.gelu(self.inp(r) + self.cond_proj[0](c))
        for k, layer in enumerate(self.hid):
            h = h + F.gelu(layer(h) + self.cond_proj[k + 1](c))
        o = self.out(h)  # (B, 9K, H, W); index j -> channel j % 3, parameter j // 3
        B, _, H, W = o.shape
        return o.view(B, 3 * K, 3, H, W).permute(0, 2, 1, 3, 4)


def nll_bits(params, x0pix, x0h, dtype=torch.float32):
    """Exact -log2 p per sub-pixel (B,3,H,W) under the mixture of discretized logistics."""
    params = params.to(dtype)
    logit, loc, logs = params[:, :, :K], params[:, :, K:2 * K], params[:, :, 2 * K:]
    base = ((x0h.to(dtype) + 1) * 127.5).unsqueeze(2)
    mu = base + 4.0 * loc
    logs = logs.clamp(min=-4.0) + math.log(2.0)  # scale in grey levels, >= ~0.04
    inv = torch.exp(-logs)
    x = x0pix.to(dtype).unsqueeze(2)
    up = (x + 0.5 - mu) * inv
    lo = (x - 0.5 - mu) * inv
    # log(sigmoid(up) - sigmoid(lo)), stable; edge bins extend to infinity
    log_cdf_up = F.logsigmoid(up)
    log_1m_cdf_lo = F.logsigmoid(-lo)
    # log(s(up)-s(lo)) = log s(up) + log(1 - exp(log s(lo) - log s(up)))
    lsl, lsu = F.logsigmoid(lo), log_cdf_up
    diff = lsu + torch.log(-torch.expm1((lsl - lsu).clamp(max=-1e-12)))
    # far in the upper tail use the mirrored form: s(-lo) - s(-up)
    l1 = F.logsigmoid(-lo); l2 = F.logsigmoid(-up)
    diff_m = l1 + torch.log(-torch.expm1((l2 - l1).clamp(max=-1e-12)))
    logp = torch.where(lo > 0, diff_m, diff)
    logp = torch.where(x <= 0, log_cdf_up, logp)
    logp = torch.where(x >= 255, log_1m_cdf_lo, logp)
    logmix = F.log_softmax(logit, 2)
    return -torch.logsumexp(logmix + logp, 2) / math.log(2.0)


def tensors(x0, xt, x0h):
    x0pix = torch.as_tensor(x0).permute(0, 3, 1, 2).float()
    x0h = torch.as_tensor(x0h); xt = torch.as_tensor(xt)
    r = (x0pix - (x0h + 1) * 127.5) / 8.0
    return r, xt, x0h, x0pix


def evaluate(net, data, bs=64):
    r, xt, x0h, x0pix = data
    tot, n = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(r), bs):
            p = net(r[b:b + bs], xt[b:b + bs], x0h[b:b + bs])
            bits = nll_bits(p, x0pix[b:b + bs], x0h[b:b + bs], torch.float64)
            tot += bits.sum().item(); n += bits.numel()
    return tot / n


def train(t, seconds):
    torch.manual_seed(0)
    x0, xt, x0h = load('train', t)
    tr = tensors(x0[:-N_VAL], xt[:-N_VAL], x0h[:-N_VAL])
    va = tensors(x0[-N_VAL:], xt[-N_VAL:], x0h[-N_VAL:])
    net = Net()
    nparam = sum(p.numel() for p in net.parameters())
    print('params', nparam, flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    bs, step, t0 = 32, 0, time.time()
    n = len(tr[0])
    while time.time() - t0 < seconds:
        perm = torch.randperm(n)
        for b in range(0, n - bs + 1, bs):
            el = time.time() - t0
            if el > seconds:
                break
            for g in opt.param_groups:  # cosine-ish decay over the time budget
                g['lr'] = 2e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(el / seconds, 1))))
            i = perm[b:b + bs]
            # random flips (horizontal) as augmentation: keep causal structure valid (whole image flipped)
            batch = [a[i] for a in tr]
            if step % 2:
                batch = [a.flip(-1) for a in batch]
            p = net(batch[0], batch[1], batch[2])
            loss = nll_bits(p, batch[3], batch[2]).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            if step % 50 == 0:
                print(f'step {step} {el:.0f}s train {loss.item():.4f}', flush=True)
            step += 1
    train_s = time.time() - t0
    val = evaluate(net, va)
    dev = evaluate(net, tensors(*load('dev', t)))
    # speed: one image forward (likelihood / encoder side) on one thread
    one = [a[:1] for a in va]
    with torch.no_grad():
        t1 = time.time()
        for _ in range(10):
            net(one[0], one[1], one[2])
        fwd = (time.time() - t1) / 10
    res = dict(t=t, params=nparam, steps=step, train_s=train_s, val=val, dev=dev, fwd_s=fwd,
               epochs=step * bs / n)
    print(json.dumps(res), flush=True)
    json.dump(res, open(f'/tmp/x0f_learned_t{t}.json', 'w'))
    torch.save(net.state_dict(), f'/tmp/x0f_learned_t{t}.pt')


if __name__ == '__main__':
    if sys.argv[1] == 'baseline':
        baseline(int(sys.argv[2]))
    else:
        train(int(sys.argv[2]), float(sys.argv[3]))
