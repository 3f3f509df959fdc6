"""Does the uncertainty map track the error? Rank correlation and coverage of the std map against K.

    python benchmarks/calibration.py --model builtin:qpi [--images 8] [--size 128] [--k 2 --k 4 --k 8 --k 16]

On held-out measurements (QPI: the camera frames of `qpi_vs_tie.py`, cell fields and held-out natural images, with
the run's noise; BioSR: the held-out cells of `biosr_table.py`, `--images` / 4 per structure at the middle of the
training photon range, `--seed 1234` its test cells; another task: pass `--data` with what `cvdm-tf eval --data`
reads), for each K: Spearman's rho of
the std map with the |error| of the mean of the samples; the same for a perfectly calibrated model with this std map
(the ceiling the spread of the std map allows, `metrics.calibration`); and the fractions of pixels whose error is
within 1 and 2 std (times sqrt(1 + 1/K)), against what a calibrated sampler reaches with a std estimated from K
samples (a Student-t with K - 1 degrees of freedom: 61% / 86% at K = 4, 65% / 91% at 8, 67% / 94% at 16; more is
over-dispersed, less over-confident; for antithetic pairs a Student-t with K / 2, no sqrt(1 + 1/K):
`metrics.calibration_targets`). The ceiling is a parametric bootstrap: sigma from the map, a truth and K fresh
samples drawn per pixel, the std re-estimated from them (`metrics.calibration`). All through `cvdm-tf eval`'s code
path (`cvdm_tf.evaluation.evaluate`), errors centred as the task scores them. Where the run (or `--recalibration
FOLDER`) has a fit of `cvdm-tf calibrate` for the setting, the recalibrated map's coverage too (fitted on other
images than these: BioSR's validation cells have seed 4321).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from cvdm_tf import io, recalibration  # noqa: E402
from cvdm_tf.evaluation import evaluate  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder or builtin:NAME")
    parser.add_argument("--data", help="held-out data as `cvdm-tf eval --data` reads it (default, QPI: the camera "
                        "frames of benchmarks/qpi_vs_tie.py, the run's default microscope; BioSR: the held-out cells "
                        "of benchmarks/biosr_table.py)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--k", type=int, action="append", help="numbers of samples (default 2, 4, 8, 16)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, help="sampling steps T (default: the run's)")
    parser.add_argument("--antithetic", choices=["yes", "no"], help="samples in antithetic pairs (default: the run's)")
    parser.add_argument("--regions", action="store_true", help="also the coverage on the background (the truth "
                        "within 5%% of its range above its minimum) and on the rest, at the largest K")
    parser.add_argument("--photons", type=float, help="BioSR: the held-out cells' photons (default: the middle of "
                        "the run's training range, as biosr_table.py)")
    parser.add_argument("--recalibration", metavar="FOLDER", help="the recalibration.json of `cvdm-tf calibrate` "
                        "in this folder (default: the model's own, if any)")
    args = parser.parse_args(argv)
    config, task, model = load_run(args.model)
    fits = recalibration.load(args.recalibration) if args.recalibration else recalibration.of_run(args.model)
    changes = {"steps": args.steps} if args.steps else {}
    if args.antithetic:
        changes.update(antithetic=args.antithetic == "yes", samples=2)
    config = config.replace(sampler=changes) if changes else config
    ks = args.k or [2, 4, 8, 16]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None and config.task == "biosr":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from biosr_table import write_held_out

            # As biosr_table.py: the middle of the training photon range.
            photons = args.photons or float(np.sqrt(config.data.photons_min * config.data.photons_max))
            write_held_out(task, tmp, max(1, args.images // 4), args.size, photons, args.seed)
            data = tmp
        elif data is None:
            import dataclasses

            from cvdm_tf.tasks import make_task
            from cvdm_tf.tasks.qpi import camera_fields

            # The camera-frame benchmark's fields (benchmarks/qpi_vs_tie.py): the centre `size` px of each is scored.
            for name, phase in camera_fields(args.images, 2 * args.size, config.data.pixel_size_um, args.seed,
                                             config.data.phase_max):
                io.write_tiff(Path(tmp) / f"{name}.tif", phase.astype(np.float32))
            task = make_task(task.name, dataclasses.replace(task.data, camera_crop=args.size, boundary="camera"))
            data = tmp
        rows = []
        for k in ks:
            began = time.process_time()
            fit = recalibration.find(fits, config.sampler, k)
            report = evaluate(config, task, model, data, samples=k, seed=args.seed, baselines=[], recalibration=fit)
            rows.append((k, report["mean"]["cvdm"], time.process_time() - began))
        fit = recalibration.find(fits, config.sampler, max(ks))
        regions = coverage_by_region(config, task, model, data, max(ks), args.seed, fit) if args.regions else None
    print(f"\n{args.model}: {config.task}, {len(report['images'])} held-out images, noise {report['noise']}, "
          f"T = {report['steps']} {report['sampler']} steps"
          f"{', K in antithetic pairs' if config.sampler.antithetic else ''}\n")
    metric = next(iter(report["mean"]["cvdm"]))  # the task's first score (QPI, BioSR: MAE; sr4x: PSNR on RGB)
    print(f"| K | {metric} | rank corr. std~|error| | calibrated ceiling | within 1 std (calibrated) | within 2 std "
          "(calibrated) | recalibrated: rank corr. | within 1 std | within 2 std | rank corr. schedule~|error| | "
          "CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, scores, cpu in rows:
        recalibrated = " | ".join(f"{scores[key]:.3f}" if key in scores else "" for key in (
            "recalibrated_std_vs_error", "recalibrated_within_1_std", "recalibrated_within_2_std"))
        print(f"| {k} | {scores[metric]:.4f} | {scores['std_vs_error']:.3f} | {scores['std_vs_error_ceiling']:.3f} | "
              f"{scores['within_1_std']:.3f} ({scores['within_1_std_target']:.3f}) | {scores['within_2_std']:.3f} "
              f"({scores['within_2_std_target']:.3f}) | {recalibrated} | {scores['schedule_vs_error']:.3f} | "
              f"{cpu:.0f} |")
    fitted = [f"K = {entry.samples}: {entry.label()}, on {entry.data}" for entry in fits]
    print("\nRecalibration: " + ("; ".join(fitted) if fitted else "none (`cvdm-tf calibrate`)"))
    if regions:
        print(f"\nBy region, K = {max(ks)} (a calibrated sampler: {regions.pop('targets')}):\n")
        print("| pixels | share | within 1 std | within 2 std | recalibrated: within 1 std | within 2 std |\n"
              "|---|---|---|---|---|---|")
        for name, (share, *within) in regions.items():
            print(f"| {name} | {share:.2f} | " + " | ".join(f"{w:.3f}" if w == w else "" for w in within) + " |")
    return 0


def coverage_by_region(config, task, model, data, k, seed, fit=None) -> dict:
    """Coverage of the truth by the std map (as `metrics.calibration` counts it, errors centred as the task scores
    them) on the background, where the truth lies within 5% of its range above its minimum, and on the rest: an
    aggregate near the targets can hide a map too wide on one and too narrow on the other. With `fit` (a
    `Recalibration` of this setting), the recalibrated map's too (else NaN)."""
    from cvdm_tf import metrics
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.sampler import sampler_for

    sampler = sampler_for(model, config.sampler)
    antithetic = config.sampler.antithetic
    counts = {"background": np.zeros(5), "structure": np.zeros(5)}
    for case in task.eval_cases(data, getattr(task.data, "noise", "none"), seed):
        out = reconstruct(model, task, case.measurement, samples=k, steps=config.sampler.steps,
                          method=config.sampler.method, seed=seed, sampler=sampler)
        mean, std = out["mean"][..., 0], out["std"][..., 0]
        centred, truth = task.centre(mean, np.asarray(case.truth))
        error = np.abs(centred - truth)
        normalised = lambda spread: error / np.maximum(  # noqa: E731
            task.centre_spread(spread, mean) * metrics.spread_of_error(k, antithetic), np.finfo(np.float64).tiny)
        z = normalised(std)
        z_fit = normalised(fit.apply(std, mean)) if fit else z * np.nan
        background = truth - truth.min() <= 0.05 * (truth.max() - truth.min())
        for name, mask in (("background", background), ("structure", ~background)):
            counts[name] += [mask.sum(), (z[mask] <= 1).sum(), (z[mask] <= 2).sum(), (z_fit[mask] <= 1).sum(),
                             (z_fit[mask] <= 2).sum()]
    total = sum(c[0] for c in counts.values())
    target_1, target_2 = metrics.calibration_targets(k, antithetic)
    nan = float("nan")
    return {"targets": f"{target_1:.3f} / {target_2:.3f}",
            **{name: (n / total, w1 / max(n, 1), w2 / max(n, 1), *((r1 / max(n, 1), r2 / max(n, 1)) if fit
                                                                   else (nan, nan)))
               for name, (n, w1, w2, r1, r2) in counts.items()}}


if __name__ == "__main__":
    sys.exit(main())
