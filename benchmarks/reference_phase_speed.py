"""Speed and accuracy of the through-focus reference phase (polynomial fit + US-TIE) on a simulated stack.

    python benchmarks/reference_phase_speed.py [--size 512] [--planes 41] [--repeats 3] [--json out.json]

Issue 13 ("QPI in the wild") asks for the whole reference-phase run under a minute at 512 x 512 on 2 CPU cores,
and within 0.05 rad MAE of the truth. This script:

1. simulates a `--planes`-plane stack (z step `--z-step` um, focus in the middle) of a `--size` px absorbing cell
   phantom: `cell_phantom` phase (peak 2.5 rad) and amplitude 1 - 0.4 * smooth(phase) / max (0.6..1), mirrored
   to 2N x 2N, propagated with `simulate_stack`, cropped back (a non-periodic camera crop), plus Gaussian
   noise sd `--noise` per plane;
2. times `reference_phase` (fit of order `--order`, default min(planes - 1, 6); US-TIE with 10 CG iterations):
   wall and CPU seconds, minimum of `--repeats` runs after one warm-up, and the fit and the solver separately;
3. prints the offset-free MAE of the reference against the truth, and of 2-shot FFT-TIE, DCT-TIE and US-TIE at
   +-`--defocus` um from the same stack, each at its best regularization from a small grid (chosen knowing the
   truth, i.e. the best-tuned baselines).

CPU seconds are reported because the machine may be shared: with 2 cores, wall ~= CPU / 2 when idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from skimage.filters import gaussian  # noqa: E402

from cvdm_tf.data.phantoms import cell_phantom  # noqa: E402
from cvdm_tf.physics.through_focus import (  # noqa: E402
    fit_derivative,
    reference_phase,
    simulate_stack,
    two_shot_planes,
)
from cvdm_tf.physics.tie import tie_us_from_derivative, tune_regularization  # noqa: E402


def _mirror(image):
    image = np.concatenate([image, image[..., ::-1]], axis=-1)
    return np.concatenate([image, image[..., ::-1, :]], axis=-2)


def _mae(estimate, truth):
    estimate = np.asarray(estimate, np.float64)
    estimate = estimate - estimate.mean()
    return float(np.mean(np.abs(estimate - (truth - truth.mean()))))


def timed(function, repeats):
    result = function()  # warm-up: TensorFlow's first-call set-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, {"wall_min_s": min(walls), "cpu_min_s": min(cpus), "walls_s": walls, "cpus_s": cpus}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--planes", type=int, default=41)
    parser.add_argument("--z-step", type=float, default=0.5, help="um")
    parser.add_argument("--defocus", type=float, default=1.0, help="2-shot dz in um")
    parser.add_argument("--noise", type=float, default=0.005, help="intensity noise sd per plane")
    parser.add_argument("--order", type=int, default=None, help="fit order (default: min(planes - 1, 6))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--write-stack", help="also write the stack as an ImageJ TIFF here and time the whole "
                        "`cvdm-tf reference-phase` command on it (start-up and file I/O included)")
    args = parser.parse_args(argv)

    # 1. The stack.
    rng = np.random.default_rng(args.seed)
    with np.errstate(over="ignore"):  # the phantom's logistic edges overflow exp() far outside a cell: harmless
        phase = cell_phantom(args.size, rng, peak=2.5).astype(np.float64)
    density = gaussian(phase, sigma=2.0)
    amplitude = 1.0 - 0.4 * density / density.max()
    focus = args.planes // 2
    z_um = (np.arange(args.planes) - focus) * args.z_step
    start = time.perf_counter()
    stack = simulate_stack(_mirror(phase), _mirror(amplitude), z_um)[:, : args.size, : args.size]
    if args.write_stack:
        import subprocess
        import tempfile

        import tifffile

        tifffile.imwrite(args.write_stack, stack.astype(np.float32), imagej=True,
                         metadata={"axes": "ZYX", "spacing": args.z_step, "unit": "um"})
        with tempfile.TemporaryDirectory() as out:
            began = time.perf_counter()
            subprocess.run(["cvdm-tf", "reference-phase", "--input", args.write_stack, "--out", out,
                            "--focus-plane", str(focus)], check=True)
            print(f"whole `cvdm-tf reference-phase` command on {args.write_stack}: "
                  f"{time.perf_counter() - began:.1f} s wall")
    stack = stack + args.noise * rng.normal(size=stack.shape)
    simulate_s = time.perf_counter() - start
    print(f"stack: {args.planes} x {args.size} x {args.size}, z {z_um[0]:g}..{z_um[-1]:g} um, noise sd {args.noise}"
          f" (simulated in {simulate_s:.1f} s)", flush=True)

    # 2. Timing: the whole reference, then its two stages.
    def whole_run():
        return reference_phase(stack, z_um, order=args.order, focus=focus)

    def fit_only():
        return fit_derivative(stack, z_um, order=args.order, focus=focus)

    (reference, _), whole = timed(whole_run, args.repeats)
    (in_focus, d_intensity_dz, _), fit = timed(fit_only, args.repeats)
    _, solve = timed(lambda: tie_us_from_derivative(in_focus, d_intensity_dz, regularization=1e-9).numpy(),
                     args.repeats)

    # 3. Accuracy: the reference and the best-tuned 2-shot solvers.
    before, after = two_shot_planes(z_um, args.defocus, focus)
    pair = np.stack([stack[before], stack[after]], axis=-1)
    candidates = np.logspace(-12, -4, 5)
    two_shot = {}
    for solver in ("fft", "dct", "us"):
        best, table = tune_regularization(pair, phase, solver, candidates, defocus_um=args.defocus)
        two_shot[solver] = {"mae_rad": table[best], "regularization": best}
    result = {
        "size": args.size,
        "planes": args.planes,
        "z_step_um": args.z_step,
        "noise_sd": args.noise,
        "order": args.order,
        "reference_mae_rad": _mae(reference, phase),
        "reference_phase": whole,
        "fit_derivative": fit,
        "tie_us": solve,
        "two_shot": two_shot,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
    }

    print(f"reference_phase: wall {whole['wall_min_s']:.2f} s, CPU {whole['cpu_min_s']:.2f} s (min of "
          f"{args.repeats}); fit {fit['wall_min_s']:.2f} s wall / {fit['cpu_min_s']:.2f} s CPU, US-TIE "
          f"{solve['wall_min_s']:.2f} s wall / {solve['cpu_min_s']:.2f} s CPU")
    print(f"MAE vs truth (offset-free): reference {result['reference_mae_rad']:.4f} rad")
    for solver, row in two_shot.items():
        print(f"  2-shot {solver.upper():3s} at +-{args.defocus:g} um: {row['mae_rad']:.4f} rad "
              f"(best regularization {row['regularization']:.0e})")
    ratio = two_shot["us"]["mae_rad"] / two_shot["fft"]["mae_rad"]
    print(f"  US-TIE / FFT-TIE 2-shot MAE: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
