"""QPI: a trained CVDM against the best-tuned classical TIE solvers, on phase objects the model never saw.

    python benchmarks/qpi_vs_tie.py --model RUN [--protocol camera|periodic] [--microscope LAM,DX,DZ ...]
                                    [--defocus-mismatch R] [--absorption A] [--images 8] [--size 128] [--json F]

Protocols:
- `camera` (the headline): each test image is a field twice as wide as the frame (2 x size px), simulated whole,
  and the camera sees its central size x size px. The frame's edges cut through objects and receive light from
  outside it, as in every real camera frame, and nothing about the field repeats: a periodic solver or forward
  model gets no help from the simulation. Fields: `--images` of cell phantoms (cells of 2-5.5 um at the
  microscope's pixel size) and one window of each natural image held out of QPI training
  (`cvdm_tf.tasks.qpi.EVAL_IMAGES`). Microscopes: the run's default and 0.60 um / 0.16 um / 2.0 um, unless
  `--microscope` is given (repeatable; `default` names the run's).
- `periodic`: `--images` cell phantoms of size px, simulated and measured as a whole periodic image (the
  simulation and the FFT solver share their boundaries: the benchmark of earlier releases). The model is told
  so (`--boundary periodic`): its TIE channel is then FFT-TIE, its data-consistency step periodic.

Every method is told the microscope the pairs claim; with `--defocus-mismatch R` they were recorded at R times
that defocus (a 10% calibration error: 1.1). `--absorption A` gives the objects amplitude 1 - A phi / phase_max.

Methods, every error offset-free (each image's mean phase removed), in radians:
- TIE with the FFT (periodic), DCT (Neumann), zero-padded FFT (free space) and US-TIE (non-uniform intensity)
  solvers, each with one Tikhonov weight tuned on these very images and their truth (an oracle: the best that
  solver can do); FFT-TIE also with each image's own oracle weight;
- the TIE channel the model sees (its solver, the noise-adaptive weight: no truth);
- `best oracle TIE + step`: the run's data-consistency step (`data.data_consistency`, `--consistency N` to
  change it) applied to the best of the oracle TIE rows (named in brackets) and to every CVDM sample, so that both
  get the same post-processing;
- CVDM: the mean of the run's K samples (its sampler), with and without the step.
Prints one markdown table per microscope and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvdm_tf.data.phantoms import cell_phantoms  # noqa: E402
from cvdm_tf.metrics import mae, ms_ssim, offset_free  # noqa: E402
from cvdm_tf.physics.tie import tie_us, tune_regularization  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import Sampler  # noqa: E402
from cvdm_tf.tasks import make_task  # noqa: E402
from cvdm_tf.tasks.qpi import EVAL_IMAGES, TIE_SOLVERS, camera_fields  # noqa: E402

SECOND_MICROSCOPE = (0.60, 0.16, 2.0)
ORACLE_SOLVERS = (("TIE (FFT)", "fft"), ("TIE (DCT)", "dct"), ("TIE (zero-padded FFT)", "pad"), ("US-TIE", "us"))
EACH_IMAGE_TIE = "TIE (FFT), each image's oracle weight"


def scores(estimates, truths):
    """Mean offset-free MAE and MS-SSIM (data range: each truth's)."""
    maes, ssims = [], []
    for estimate, truth in zip(estimates, truths):
        a, b = offset_free(np.asarray(estimate, np.float64), np.asarray(truth, np.float64))
        maes.append(mae(a, b))
        ssims.append(ms_ssim(a, b, data_range=float(truth.max() - truth.min())))
    return {"mae": float(np.mean(maes)), "ms_ssim": float(np.mean(ssims))}


def test_images(protocol, count, size, pixel_size_um, seed, phase_max, natural=True):
    """(name, truth phase) of the fields to simulate: wide fields (camera) or whole images (periodic)."""
    if protocol == "camera":
        return camera_fields(count, 2 * size, pixel_size_um, seed, phase_max, natural=EVAL_IMAGES if natural else ())
    return [(f"cells{i}", phase) for i, phase in enumerate(
        cell_phantoms(count, size, seed=seed, peak=phase_max * 0.85, pixel_size_um=pixel_size_um))]


def solve(solver, measured, weight, microscope):
    m = microscope
    solve_one = tie_us if solver == "us" else TIE_SOLVERS[solver]
    return solve_one(measured, m.defocus_um, m.wavelength_um, m.pixel_size_um, weight).numpy()


def benchmark(task, sampler, args, microscope, noise):
    """One microscope, one noise model: {method: scores}."""
    d = task.data
    recorded = task.with_physics(defocus_um=microscope.defocus_um * args.defocus_mismatch)
    fields = test_images(args.protocol, args.images, args.size, microscope.pixel_size_um, args.seed, d.phase_max,
                         args.natural)
    cases = [recorded.simulate_case(name, phase, noise, (args.seed, i)) for i, (name, phase) in enumerate(fields)]
    measured = tf.constant(np.stack([case.measurement for case in cases]))
    truths = [case.truth for case in cases]
    physics = dict(defocus_um=microscope.defocus_um, wavelength_um=microscope.wavelength_um,
                   pixel_size_um=microscope.pixel_size_um)
    row, oracle = {}, {}
    for name, solver in ORACLE_SOLVERS:
        best, _ = tune_regularization(measured, np.stack(truths), solver=solver, **physics)
        oracle[name] = solve(solver, measured, best, microscope)
        row[name] = {"regularization": best, **scores(oracle[name], truths)}
    own = [tune_regularization(measured[i:i + 1], truths[i][None], **physics)[0] for i in range(len(truths))]
    row[EACH_IMAGE_TIE] = {"regularization": own, **scores(
        solve("fft", measured, np.array(own, np.float32)[:, None, None], microscope), truths)}
    y = task.normalize_condition(measured)
    if d.tie_channel:
        row["TIE channel (model input)"] = scores(task.denormalize_target(y[..., -1:]).numpy()[..., 0], truths)
    if task.refines:
        best = min(oracle, key=lambda name: row[name]["mae"])
        stepped = np.asarray(task.refine(oracle[best][:, None, :, :, None], measured))[:, 0, ..., 0]
        row["best oracle TIE + step"] = {"solver": best, **scores(stepped, truths)}
    began, cpu = time.perf_counter(), time.process_time()
    out = sampler(y, steps=args.steps, samples=args.samples, seed=args.seed, method=args.sampler)
    drawn = task.denormalize_target(out["samples"]).numpy()
    row["CVDM, sampler alone" if task.refines else "CVDM"] = {
        **scores(drawn.mean(axis=1)[..., 0], truths),
        "mean_std_rad": float(np.mean(drawn.std(axis=1, ddof=sampler.std_ddof)))}
    if task.refines:
        # As `cvdm-tf infer`: each sample refined against its own pair, then the mean.
        drawn = np.asarray(task.refine(drawn, measured))
        row["CVDM + step"] = {**scores(drawn.mean(axis=1)[..., 0], truths),
                              "mean_std_rad": float(np.mean(drawn.std(axis=1, ddof=sampler.std_ddof)))}
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    row["cpu_seconds_per_image"] = cpu / len(truths)
    row["wall_seconds_per_image"] = wall / len(truths)
    return row, [name for name, _ in fields]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder of `cvdm-tf train`, or builtin:qpi")
    parser.add_argument("--protocol", choices=["camera", "periodic"], default="camera")
    parser.add_argument("--microscope", action="append",
                        help="LAM,DX,DZ in um, or `default` (repeatable; default: the run's and 0.60,0.16,2.0 for "
                             "camera, the run's for periodic)")
    parser.add_argument("--defocus-mismatch", type=float, default=1.0,
                        help="pairs recorded at this times the defocus every method assumes")
    parser.add_argument("--absorption", type=float, default=0.0)
    parser.add_argument("--images", type=int, default=8, help="cell images (camera: plus the natural ones)")
    parser.add_argument("--no-natural", dest="natural", action="store_false",
                        help="camera: cell fields only (with another --seed: a validation set for choices)")
    parser.add_argument("--size", type=int, default=128, help="frame (camera) or image (periodic) side, px")
    parser.add_argument("--noise", action="append", choices=["paper", "none", "poisson"],
                        help="noise models (repeatable; default paper and none)")
    parser.add_argument("--samples", type=int, help="samples K (default: the run's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], help="default: the run's")
    parser.add_argument("--antithetic", choices=["yes", "no"], help="samples in antithetic pairs (default: the run's)")
    parser.add_argument("--discretisation", choices=["exact", "paper"], help="default: the run's")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], help="the denoiser's compute dtype "
                        "while sampling (default: the run's)")
    parser.add_argument("--consistency", type=int, help="data-consistency steps after sampling (default: the run's "
                        "data.data_consistency)")
    parser.add_argument("--consistency-weight", type=float, help="default: the run's data.consistency_weight")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    config, task, model = load_run(args.model)
    d = config.data
    changes = {key: value for key, value in (("data_consistency", args.consistency),
                                            ("consistency_weight", args.consistency_weight),
                                            ("absorption", args.absorption)) if value is not None}
    # What the measurements are, as `--boundary` tells `cvdm-tf infer`: camera frames, or periodic fields.
    changes.update(camera_crop=args.size if args.protocol == "camera" else 0, boundary=args.protocol)
    task = make_task(task.name, dataclasses.replace(d, **changes))
    args.steps = args.steps or config.sampler.steps
    args.samples = args.samples or config.sampler.samples
    args.sampler = args.sampler or config.sampler.method
    sampler = Sampler(model, discretisation=args.discretisation or config.sampler.discretisation,
                      grid=config.sampler.grid, precision=args.precision or config.sampler.precision,
                      antithetic=config.sampler.antithetic if args.antithetic is None else args.antithetic == "yes")
    named = args.microscope or (["default", ",".join(map(str, SECOND_MICROSCOPE))] if args.protocol == "camera"
                                else ["default"])
    results = {"model": args.model, "protocol": args.protocol, "size": args.size, "samples": args.samples,
               "steps": args.steps, "sampler": args.sampler, "precision": sampler.precision,
               "antithetic": sampler.antithetic,
               "defocus_mismatch": args.defocus_mismatch, "absorption": args.absorption,
               "data_consistency": task.data.data_consistency,
               "microscopes": {}}
    noises = args.noise or ["paper", "none"]
    for spec in named:
        if spec == "default":
            scope = task
        else:
            wavelength, pixel, defocus = (float(v) for v in spec.split(","))
            scope = task.with_physics(wavelength, pixel, defocus)
        microscope = scope.microscope
        try:
            scope.check_physics()
        except Exception as err:  # measured all the same: how a model fares outside its range is worth knowing
            print(f"\nnote: {err}")
        rows = {}
        for noise in noises:
            rows[noise], names = benchmark(scope, sampler, args, microscope, noise)
        results["microscopes"][microscope.describe()] = {"images": names, **rows}
        what = (f"{len(names)} camera frames of {args.size} px, the centres of fields of {2 * args.size} px "
                f"({', '.join(names)})" if args.protocol == "camera"
                else f"{len(names)} periodic cell phantoms of {args.size} px")
        print(f"\n{microscope.describe()}; {what}; recorded at {args.defocus_mismatch:g} x the defocus, "
              f"absorption {args.absorption:g}. CVDM: K = {args.samples}"
              f"{' (antithetic pairs)' if sampler.antithetic else ''}, {args.steps} {args.sampler} steps, "
              f"{sampler.precision}; {task.data.data_consistency} data-consistency step(s); "
              "TIE weights tuned on the test images (oracle); offset-free MAE in rad\n")
        print("| method | " + " | ".join(f"MAE {n} | MS-SSIM {n}" for n in noises) + " |")
        print("|---" * (1 + 2 * len(noises)) + "|")
        methods = [k for k, v in rows[noises[0]].items() if isinstance(v, dict)]
        for method in methods:
            cells = " | ".join(f"{rows[n][method]['mae']:.4f} | {rows[n][method]['ms_ssim']:.4f}" for n in noises)
            solvers = sorted({rows[n][method]["solver"] for n in noises if "solver" in rows[n][method]})
            print(f"| {method}{' (' + ', '.join(solvers) + ')' if solvers else ''} | {cells} |")
        print(f"\nCVDM: {rows[noises[0]]['cpu_seconds_per_image']:.1f} CPU-s per image")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
