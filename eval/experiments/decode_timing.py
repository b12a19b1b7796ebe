"""Rough decoder-side cost of the learned x_0 model (not a decoder): sequential decoding needs one evaluation per
sub-pixel; the net's receptive field is 7 pixels up/left/right (5x5 A + five 3x3 B layers), so each step can run on
an 8x15 crop. Times 3072 such crop evaluations on one thread. Usage: python decode_timing.py T"""
import sys, time, torch
import x0_layer_feasibility as m
torch.set_num_threads(1)
net = m.Net(); net.load_state_dict(torch.load(f'/tmp/x0f_learned_t{sys.argv[1]}.pt')); net.eval()
r, xt, x0h = torch.zeros(1, 3, 8, 15), torch.zeros(1, 3, 8, 15), torch.zeros(1, 3, 8, 15)
with torch.no_grad():
    for _ in range(20): net(r, xt, x0h)
    t0 = time.time()
    for _ in range(3072): net(r, xt, x0h)
print(f'3072 crop evaluations: {time.time() - t0:.2f} s')
