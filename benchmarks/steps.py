"""Sampling steps T against quality and speed: DDPM / DDIM x the paper's eq. 10 / the exact discretisation.

    python benchmarks/steps.py --model runs/qpi-... [--steps 2 5 10 20 50 100 200] [--images 8] [--samples 4]
    python benchmarks/steps.py --model runs/qpi-... --steps 2 5 --images 2 --size 32      # a quick check

The held-out set is the one of benchmarks/qpi_vs_tie.py: cell phantoms (cvdm_tf.data.phantoms, never trained on)
simulated with the run's physics and noise model `--noise`, scored offset-free in radians with that script's
`scores`. The estimate is the mean of K samples. Seconds per image: the minimum over `--repeats` runs
of the whole batch (wall clock, after one untimed call that compiles the graph), and the CPU seconds of that run.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from qpi_vs_tie import scores  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)

from cvdm_tf.config import SAMPLERS, SamplerConfig  # noqa: E402
from cvdm_tf.data.phantoms import cell_phantoms  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import Sampler  # noqa: E402


def held_out(task, config, images, size, seed, noise):
    """(normalised conditions [N, H, W, C], phase truths [N, H, W] in radians), as qpi_vs_tie.py builds them."""
    truths = np.stack(cell_phantoms(images, size, seed=seed, peak=config.data.phase_max * 0.85))
    clean = task.measure(tf.constant(truths))
    measured = tf.stack([task.add_noise(clean[i], tf.constant([seed, i], tf.int64), noise=noise)
                         for i in range(images)])
    return task.normalize_condition(measured, boundary="periodic"), truths  # whole, periodic images


def timed(sampler, y, repeats, **kwargs):
    """(output of the fastest run, its wall seconds, its CPU seconds)."""
    best = None
    for _ in range(repeats):
        began, cpu = time.perf_counter(), time.process_time()
        out = sampler(y, **kwargs)
        out["mean"].numpy()  # wait for the result
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        if best is None or wall < best[1]:
            best = (out, wall, cpu)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder of `cvdm-tf train`")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100, 200], help="values of T")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4, help="K samples per image (the estimate is their mean)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--noise", default="paper", help="noise model of the measurements (the task's: paper, ...)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the fastest counts)")
    parser.add_argument("--methods", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--discretisations", nargs="+", choices=SamplerConfig.DISCRETISATIONS,
                        default=["paper", "exact"])
    parser.add_argument("--grid", choices=SamplerConfig.GRIDS, default="uniform")
    args = parser.parse_args(argv)

    config, task, model = load_run(args.model)
    y, truths = held_out(task, config, args.images, args.size, args.seed, args.noise)
    rows = []
    for discretisation in args.discretisations:
        sampler = Sampler(model, discretisation=discretisation, grid=args.grid)
        sampler(y[:1], steps=min(args.steps), samples=1)  # compile once; T, K and the seed are graph inputs
        for method in args.methods:
            for steps in args.steps:
                out, wall, cpu = timed(sampler, y, args.repeats, steps=steps, samples=args.samples, seed=args.seed,
                                       method=method)
                estimates = task.denormalize_target(out["mean"]).numpy()[..., 0]
                error, similarity = scores(estimates, truths).values()
                rows.append((method, discretisation, steps, error, similarity, wall / args.images,
                             cpu / args.images))

    order = lambda row: (args.methods.index(row[0]), row[2], args.discretisations.index(row[1]))  # noqa: E731
    rows.sort(key=order)  # paper and exact side by side at each T
    print(f"\n{args.model}: {args.images} cell phantoms, {args.size} px, noise {args.noise}, K = {args.samples}, "
          f"grid {args.grid}, offset-free\n")
    print("| sampler | discretisation | T | MAE (rad) | MS-SSIM | s / image | CPU s / image |")
    print("|---|---|---|---|---|---|---|")
    for method, discretisation, steps, error, similarity, wall, cpu in rows:
        print(f"| {method} | {discretisation} | {steps} | {error:.4f} | {similarity:.4f} | {wall:.3f} | {cpu:.3f} |")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
