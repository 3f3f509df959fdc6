"""Speed of training and sampling with the default QPI config; prints a table and writes JSON.

    python benchmarks/speed.py [--repeats 3] [--steps 200] [--json benchmarks/speed.json]
    python benchmarks/speed.py --config configs/qpi-reference.toml   # another config (e.g. the reference's size)
    python benchmarks/speed.py --xla                                # also with XLA (jit_compile) and without
    python benchmarks/speed.py --bfloat16                           # also in bfloat16 (training and sampling)

Measures (minimum and median of --repeats runs, wall and CPU seconds, since a shared machine is noisy):
- ms per training step (64 x 64, batch 8 or --train-batch, default config);
- seconds per sampled image at 64 x 64 and 256 x 256 (--sizes), T steps, K = 1 and K = 8 (--k) samples per
  condition;
- one denoiser forward pass on the same batch, so the sampler's cost can be compared to T x forward
  (the sampler's overhead beyond the denoiser is the time networks and the update arithmetic per step);
- peak resident memory of the process;
- with --xla: the training step and the sampler compiled with XLA (tf.function(jit_compile=True)) next to the
  plain graphs, on the same inputs;
- with --bfloat16: the training step with `train.precision = "mixed_bfloat16"` and the sampler with
  `sampler.precision = "bfloat16"` (the same weights' denoiser computing in bfloat16), on the same inputs.
The parameter counts of the networks are printed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvdm_tf.config import default_config, load_config  # noqa: E402
from cvdm_tf.model import build_model, make_optimizer  # noqa: E402
from cvdm_tf.runs import resolve_config  # noqa: E402
from cvdm_tf.sampler import sampler_for  # noqa: E402


def timed(function, repeats, warm_up=None):
    (warm_up or function)()  # tracing and first-call allocation
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_min": min(walls), "wall_median": statistics.median(walls), "cpu_median": statistics.median(cpus)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="sampling steps T")
    parser.add_argument("--train-steps", type=int, default=20, help="training steps per timed run")
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--json")
    parser.add_argument("--config", help="TOML config (default: configs/qpi.toml)")
    parser.add_argument("--xla", action="store_true", help="also time the XLA-compiled train step and sampler")
    parser.add_argument("--bfloat16", action="store_true", help="also time training and sampling in bfloat16")
    parser.add_argument("--k", default="1,8", help="samples per condition K to time (comma-separated)")
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the timed training step")
    args = parser.parse_args(argv)

    config = resolve_config(load_config(args.config) if args.config else default_config("qpi"))
    # The plain rows in float32 whatever the config says; --bfloat16 adds the bfloat16 rows.
    model = build_model(config.replace(train={"precision": "float32"}))
    model.compile(optimizer=make_optimizer(config.train))
    for network in (model.denoiser, getattr(model.schedule, "tau_net", None), model.mean_net):
        if network is not None:
            print(f"{network.name}: {network.count_params() / 1e6:.2f} M parameters")
    print(f"total: {model.count_params() / 1e6:.2f} M parameters")
    channels = config.model.condition_channels
    rng = np.random.default_rng(0)
    rows = []

    batch = args.train_batch
    y = tf.constant(rng.normal(size=(batch, 64, 64, channels)), tf.float32)
    x = tf.constant(rng.uniform(-1, 1, (batch, 64, 64, 1)), tf.float32)
    step = tf.function(model.train_step)

    def train():
        for _ in range(args.train_steps):
            step((y, x))

    t = timed(train, args.repeats)
    rows.append((f"train step, 64x64, batch {batch}", "ms/step", {k: 1000 * v / args.train_steps for k, v in t.items()}))
    if args.bfloat16:
        low = build_model(config.replace(train={"precision": "mixed_bfloat16"}))
        low.compile(optimizer=make_optimizer(config.train))
        step_low = tf.function(low.train_step)

        def train_low():
            for _ in range(args.train_steps):
                step_low((y, x))

        t = timed(train_low, args.repeats)
        rows.append((f"train step, 64x64, batch {batch}, mixed_bfloat16", "ms/step",
                     {k: 1000 * v / args.train_steps for k, v in t.items()}))
    if args.xla:
        step = tf.function(model.train_step, jit_compile=True)
        t = timed(train, args.repeats)
        rows.append((f"train step, 64x64, batch {batch}, XLA", "ms/step",
                     {k: 1000 * v / args.train_steps for k, v in t.items()}))

    sampler = sampler_for(model, dataclasses.replace(config.sampler, precision="float32"))
    for size in (int(s) for s in args.sizes.split(",")):
        condition = tf.constant(rng.normal(size=(1, size, size, channels)), tf.float32)
        for samples in (int(k) for k in args.k.split(",")):
            z = tf.zeros([samples, size, size, 1])
            forward = tf.function(lambda: model((z, tf.repeat(condition, samples, 0), z + 0.5)))
            f = timed(forward, args.repeats)
            # The step count is a graph input: a 2-step call traces the same graph the T-step call runs.
            s = timed(lambda: sampler(condition, steps=args.steps, samples=samples), args.repeats,
                      warm_up=lambda: sampler(condition, steps=2, samples=samples))
            rows.append((f"sample {size}x{size}, T={args.steps}, K={samples}", "s/image", s))
            if args.bfloat16:
                low_sampler = sampler_for(model, dataclasses.replace(config.sampler, precision="bfloat16"))
                s = timed(lambda: low_sampler(condition, steps=args.steps, samples=samples), args.repeats,
                          warm_up=lambda: low_sampler(condition, steps=2, samples=samples))
                rows.append((f"sample {size}x{size}, T={args.steps}, K={samples}, bfloat16", "s/image", s))
            if args.xla:  # XLA compiles per shape: the same shapes as above, one compilation in the warm-up
                xla = tf.function(sampler._sample, jit_compile=True)

                def run(steps):
                    return xla(condition, tf.constant(steps), tf.constant(samples), tf.constant(0), tf.constant(False))

                s = timed(lambda: run(args.steps), args.repeats, warm_up=lambda: run(2))
                rows.append((f"sample {size}x{size}, T={args.steps}, K={samples}, XLA", "s/image", s))
            rows.append((f"  denoiser forward x T, {size}x{size}, batch {samples}", "s/image",
                         {k: v * args.steps for k, v in f.items()}))

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}"
    print(f"\n{machine}; repeats {args.repeats}; peak RSS {peak_mib:.0f} MiB\n")
    print("| what | unit | min (wall) | median (wall) | median (CPU) |")
    print("|---|---|---|---|---|")
    for name, unit, t in rows:
        print(f"| {name} | {unit} | {t['wall_min']:.3g} | {t['wall_median']:.3g} | {t['cpu_median']:.3g} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "peak_rss_mib": peak_mib,
                       "rows": [{"what": n, "unit": u, **t} for n, u, t in rows]}, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
