"""QPI: a trained CVDM against the best-tuned classical TIE baseline, on phase objects the model never saw.

    python benchmarks/qpi_vs_tie.py --model runs/qpi-... [--images 8] [--size 128] [--samples K] [--json out.json]

Test objects: cell-like phantoms (cvdm_tf.data.phantoms, not from scikit-image), simulated with the run's physics,
once noise-free and once with the paper's noise model. TIE (FFT and DCT solvers) gets its Tikhonov weight tuned on
these very images and their truth (an oracle choice: the best TIE can possibly do), once for all images and once
for each image (stronger, as the noise level differs from image to image); a third FFT-TIE row picks each image's
weight from the noise level estimated on its pair (no truth: what a user can run). CVDM's samples get the run's
data-consistency steps, as `cvdm-tf infer` gives them (`--consistency 0` for the sampler's mean alone). Every
error is offset-free (each image's mean phase subtracted), in radians. Prints a markdown table and optionally
writes JSON.
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
from cvdm_tf.physics.tie import tie_dct, tie_fft, tune_regularization  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import Sampler  # noqa: E402
from cvdm_tf.tasks import make_task  # noqa: E402


EACH_IMAGE_TIE = "TIE (FFT), each image's oracle weight"


def offset_free_scores(estimates, truths):
    maes, ssims = [], []
    for estimate, truth in zip(estimates, truths):
        a, b = offset_free(np.asarray(estimate, np.float64), np.asarray(truth, np.float64))
        maes.append(mae(a, b))
        ssims.append(ms_ssim(a, b, data_range=float(truth.max() - truth.min())))
    return float(np.mean(maes)), float(np.mean(ssims))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder of `cvdm-tf train`")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, help="samples K (default: the run's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], help="default: the run's")
    parser.add_argument("--discretisation", choices=["exact", "paper"], help="default: the run's")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], help="the denoiser's compute dtype "
                        "while sampling (default: the run's)")
    parser.add_argument("--consistency", type=int, help="data-consistency steps after sampling (default: the run's "
                        "data.data_consistency)")
    parser.add_argument("--consistency-weight", type=float, help="default: the run's data.consistency_weight")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    config, task, model = load_run(args.model)
    if args.consistency is not None or args.consistency_weight is not None:
        task = make_task(task.name, dataclasses.replace(
            config.data, data_consistency=config.data.data_consistency if args.consistency is None
            else args.consistency, consistency_weight=args.consistency_weight or config.data.consistency_weight))
    steps = args.steps or config.sampler.steps
    args.samples = args.samples or config.sampler.samples
    d = config.data
    physics = dict(defocus_um=d.defocus_um, wavelength_um=d.wavelength_um, pixel_size_um=d.pixel_size_um)
    truths = cell_phantoms(args.images, args.size, seed=args.seed, peak=d.phase_max * 0.85)
    method = args.sampler or config.sampler.method
    sampler = Sampler(model, discretisation=args.discretisation or config.sampler.discretisation,
                      grid=config.sampler.grid, precision=args.precision or config.sampler.precision)
    precision = sampler.precision
    results = {"model": args.model, "images": args.images, "size": args.size, "samples": args.samples,
               "steps": steps, "sampler": method, "precision": precision, "noise": {}}

    for noise in ("paper", "none"):
        clean = task.measure(tf.constant(np.stack(truths)))
        measured = tf.stack([task.add_noise(clean[i], tf.constant([args.seed, i], tf.int64), noise=noise)
                             for i in range(args.images)])
        row = {}
        for name, solver in (("TIE (FFT)", tie_fft), ("TIE (DCT)", tie_dct)):
            best, _ = tune_regularization(measured, np.stack(truths), solver=name[5:8].lower(), **physics)
            estimates = solver(measured, regularization=best, **physics).numpy()
            row[name] = {"regularization": best, **dict(zip(("mae", "ms_ssim"), offset_free_scores(estimates, truths)))}
        # Each image its own oracle weight: stronger than one weight for all, since the noise differs per image.
        own = [tune_regularization(measured[i:i + 1], truths[i][None], **physics)[0] for i in range(args.images)]
        estimates = tie_fft(measured, regularization=np.array(own, np.float32)[:, None, None], **physics).numpy()
        row[EACH_IMAGE_TIE] = {
            "regularization": own, **dict(zip(("mae", "ms_ssim"), offset_free_scores(estimates, truths)))}
        # No truth: the weight from the noise level the pair itself shows.
        weights = task.noise_weight(measured)
        estimates = tie_fft(measured, regularization=weights, **physics).numpy()
        row["TIE (FFT), noise-adaptive weight"] = {
            "regularization": weights.numpy().ravel().tolist(),
            **dict(zip(("mae", "ms_ssim"), offset_free_scores(estimates, truths)))}
        y = task.normalize_condition(measured)
        if d.tie_channel:
            tie_input = task.denormalize_target(y[..., -1:]).numpy()[..., 0]
            row["TIE channel (model input)"] = dict(zip(("mae", "ms_ssim"), offset_free_scores(tie_input, truths)))
        began, cpu = time.perf_counter(), time.process_time()
        out = sampler(y, steps=steps, samples=args.samples, seed=args.seed, method=method)
        # As `cvdm-tf infer`: each sample refined against its own pair (data consistency, when the run asks).
        drawn = task.denormalize_target(out["samples"]).numpy()
        drawn = np.asarray(task.refine(drawn, measured))
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        estimates = drawn.mean(axis=1)[..., 0]
        scores = dict(zip(("mae", "ms_ssim"), offset_free_scores(estimates, truths)))
        row["CVDM"] = {**scores, "mean_std_rad": float(np.mean(drawn.std(axis=1, ddof=1))),
                       "seconds_per_image": wall / args.images, "cpu_seconds_per_image": cpu / args.images}
        results["noise"][noise] = row

    print(f"\n{args.images} cell phantoms, {args.size} px, offset-free; CVDM: {args.samples} samples, {steps} "
          f"{method} steps, {args.discretisation or config.sampler.discretisation} discretisation, {precision}, "
          f"{task.data.data_consistency} data-consistency steps; TIE regularisation tuned on the test images "
          "(oracle)\n")
    print("| method | MAE noisy (rad) | MS-SSIM noisy | MAE noise-free (rad) | MS-SSIM noise-free |")
    print("|---|---|---|---|---|")
    for method in results["noise"]["paper"]:
        noisy, clean = results["noise"]["paper"][method], results["noise"]["none"][method]
        print(f"| {method} | {noisy['mae']:.4f} | {noisy['ms_ssim']:.4f} | {clean['mae']:.4f} | {clean['ms_ssim']:.4f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
