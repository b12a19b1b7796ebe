"""Where the bits go, per stop point of the progressive codec: six rates side by side on the same images.

    python -m eval.ledger --limit 16                  # docs/results/ledger_dev16.{md,json}; 6 min here
    python -m eval.ledger --limit 2 --out /tmp/l      # timing check
    python -m eval.ledger --limit 500                 # the overnight run: 2-3 h on one CPU thread (13.5 s/image
                                                      # on an idle core, 18-50 s while the 2-core machine is
                                                      # shared); resumable: finished images are cached under
                                                      # --cache and reused, so an interrupted run continues

Per coded stop point t of the codec's schedule (T .. t_end, then 0 = lossless), in bits/dim (means over images,
± standard error over images):

(a) model: the model's own 1000-step ideal rate to hold x_t (Table 4 style): prior KL + sum over every single step
    s -> s-1 for s = T .. t+1 of KL(q(x_{s-1}|x_s,x_0) || p(x_{s-1}|x_s)), a fresh x_s ~ q(x_s|x_0) per term, p with
    the clipped x^_0 mean and the codec's prior variance (calibrated: Schedule.prior_variance(s, s-1, 'calibrated',
    mse_x0=profile.mse_x0[s])). Estimated without bias per image: the single steps are split into the intervals
    between coded steps; an interval of <= --t-samples steps is evaluated exactly, a longer one by --t-samples
    timesteps stratified in the CDF of a proposal proportional to the profile's per-step rate (importance weights
    1/q). Lossless row: the model's NELBO (all steps down to s = 2, plus the discretized decoder term at t = 1).
(b) schedule: the codec's schedule's own unbiased NELBO (eval.bitsback_bench.schedule_nelbo, for the *progressive*
    codec's equal_kl_schedule): per coded skip t_j -> t_{j+1} a fresh x_{t_j} ~ q(x_{t_j}|x_0) and the KL under the
    codec's prior; prior KL at T included. Lossless row: + the x_0 layer's code length from a fresh x_{t_end}.
(c) chain ideal: the exact KL of every coded step along the chain the encoder actually sampled (cumsum of
    StepStat.ideal_bits; lossless row: + the x_0 layer's code length).
(d) stream: bits the coded steps occupy on the rANS stack (StepStat.stream_bits), no header, no coder termination.
(e) file: the whole valid file that stops there, 8 * bytes_if_stopped (header, payload and termination).
(f) PSNR of x^_0 at t (dB, mean of per-image PSNR).

The lossless file is split into rate (the steps' stream bits), x_0 layer (its stream bits), header
(container.header.unpack(file).header_bytes) and coder termination (file - header - stream).
Skips cleanly (exit 0, one line) when the dev images (../shared) are absent and --images is not given.
"""
from eval.ledger.main import main  # noqa: F401
from eval.ledger.rates import (codec_columns, interval_samples, ledger_image, model_ideal,  # noqa: F401
                                schedule_nelbo)
from eval.ledger.write import aggregate, markdown  # noqa: F401
