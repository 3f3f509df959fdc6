"""QPI: choose the sampler (method, T, K) and the data-consistency weight on validation camera frames.

    python benchmarks/qpi_sampler_sweep.py --model RUN [--seed 4321] [--images 12] [--setting ddpm:2:8 ...]
                                           [--weight 1000 ...]

Validation frames, never the benchmark's: the camera frames of `qpi_vs_tie.py` made from cell fields of another
seed (4321; the test fields use 1234, training 2024), no natural image, the paper's noise, at the run's default
microscope and at 0.60 / 0.16 / 2.0 um. For each sampler setting the mean of the samples, alone and after one
data-consistency step at 100, 1000 and 10000 (`--weight`) times the noise-adaptive weight, and the same for a mean
network's own estimate where the run has one. Prints the offset-free MAE (rad).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from qpi_vs_tie import SECOND_MICROSCOPE, scores, test_images  # noqa: E402  (benchmarks/ is sys.path[0])

from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import sampler_for  # noqa: E402
from cvdm_tf.tasks import make_task  # noqa: E402

SETTINGS = (("ddpm", 10, 16), ("ddpm", 10, 32), ("ddpm", 2, 16), ("ddpm", 5, 16), ("ddpm", 20, 16), ("ddim", 10, 16))
WEIGHTS = (100.0, 1000.0, 10000.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--setting", action="append",
                        help="METHOD:T:K[:a] to measure, :a for antithetic pairs (repeatable; default: the sweep of "
                        "SETTINGS)")
    parser.add_argument("--weight", type=float, action="append",
                        help="data-consistency weight in units of the noise-adaptive one (repeatable; default: "
                        + ", ".join(f"{w:g}" for w in WEIGHTS) + ")")
    args = parser.parse_args(argv)
    weights = args.weight or WEIGHTS
    settings = SETTINGS
    if args.setting:
        settings = [(m, int(t), int(k), rest == ["a"]) for m, t, k, *rest in (s.split(":") for s in args.setting)]
    config, task, model = load_run(args.model)
    samplers = {pairs: sampler_for(model, dataclasses.replace(config.sampler, antithetic=pairs, samples=2))
                for pairs in (False, True)}
    frames = make_task(task.name, dataclasses.replace(config.data, camera_crop=args.size, boundary="camera"))
    print("| microscope | sampler | T | K | antithetic | no step | "
          + " | ".join(f"step x{w:g}" for w in weights) + " |")
    print("|---" * (6 + len(weights)) + "|")
    for name, scope in (("default", frames), ("0.60 / 0.16 / 2.0", frames.with_physics(*SECOND_MICROSCOPE))):
        m = scope.microscope
        fields = test_images("camera", args.images, args.size, m.pixel_size_um, args.seed, scope.data.phase_max,
                             natural=False)
        cases = [scope.simulate_case(n, p, "paper", (args.seed, i)) for i, (n, p) in enumerate(fields)]
        measured = tf.constant(np.stack([case.measurement for case in cases]))
        truths = [case.truth for case in cases]
        y = scope.normalize_condition(measured)
        stepped = [make_task(task.name, dataclasses.replace(scope.data, data_consistency=1, consistency_weight=w))
                   for w in weights]
        for method, steps, samples, *pairs in settings:
            pairs = bool(pairs and pairs[0])
            out = samplers[pairs](y, steps=steps, samples=samples, seed=args.seed, method=method)
            drawn = scope.denormalize_target(out["samples"]).numpy()
            row = [scores(drawn.mean(axis=1)[..., 0], truths)["mae"]]
            for step in stepped:
                row.append(scores(np.asarray(step.refine(drawn, measured)).mean(axis=1)[..., 0], truths)["mae"])
            print(f"| {name} | {method} | {steps} | {samples} | {'yes' if pairs else 'no'} | "
                  + " | ".join(f"{v:.4f}" for v in row) + " |")
        if "mean_network" in out:  # the mean network's own E[x|y] (no samples), alone and refined alike
            estimate = scope.denormalize_target(out["mean_network"][:, None]).numpy()
            row = [scores(estimate[:, 0, ..., 0], truths)["mae"]]
            for step in stepped:
                row.append(scores(np.asarray(step.refine(estimate, measured))[:, 0, ..., 0], truths)["mae"])
            print(f"| {name} | mean network | | | | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
