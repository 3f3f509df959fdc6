"""`cvdm-tf eval`: reconstruct simulated measurements with a model and with classical baselines, score them all.

For each ground-truth image in the data path:
    1. the truth (QPI: phase in radians; integer images scaled to [0, phase_max], float images as they are);
    2. the condition the task's physics makes of it, with the chosen noise model (seeded per image);
    3. reconstructions: the model (mean of K samples, with its std and schedule maps) and each baseline
       (`tie`: the FFT-TIE solver, its Tikhonov weight tuned on the evaluated images unless given: an oracle
       choice that makes it the best TIE can do);
    4. metrics against the truth, offset-free for QPI (each image's mean removed: phase is known up to a
       constant): MAE in radians and in the paper's [-1, 1] scale (radians * 2 / phase_max), MS-SSIM (data range
       = the truth's range), and for the model the rank correlations of its std and schedule maps with the error.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from cvdm_tf import metrics
from cvdm_tf.data import sources
from cvdm_tf.errors import InputError
from cvdm_tf.physics.tie import tune_regularization
from cvdm_tf.simulate import phase_from_image

BASELINES = ("tie",)


def score(estimate, truth, phase_max):
    a, b = metrics.offset_free(np.asarray(estimate, np.float64), np.asarray(truth, np.float64))
    data_range = float(np.ptp(b)) or 1.0
    error = metrics.mae(a, b)
    return {"mae_rad": error, "mae_paper": error * 2.0 / phase_max, "ms_ssim": metrics.ms_ssim(a, b, data_range)}


def evaluate(config, task, model, data_path, noise="paper", samples=4, steps=None, method=None, seed=0,
             baselines=BASELINES, tie_regularization=None, progress=None) -> dict:
    """Per-image and mean metrics of the model and the baselines on the images in `data_path`."""
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.sampler import Sampler

    d = config.data
    for baseline in baselines:
        if baseline not in BASELINES:
            raise InputError(f"unknown baseline {baseline!r} (known: {', '.join(BASELINES)})")
    items = sources.iter_source_images(data_path, with_dtype=True)
    truths = [(name, phase_from_image(image, dtype, d.phase_max)) for name, image, dtype in items]
    measured = [task.add_noise(task.measure(tf.constant(truth)), tf.constant([seed, i], tf.int64), noise=noise)
                .numpy() for i, (_, truth) in enumerate(truths)]

    regularization = tie_regularization
    if "tie" in baselines and regularization is None:
        # Oracle tuning per image set: images may differ in size, so tune on each and take the median.
        choices = [tune_regularization(m[None], t[None], solver="fft", defocus_um=d.defocus_um,
                                       wavelength_um=d.wavelength_um, pixel_size_um=d.pixel_size_um)[0]
                   for m, (_, t) in zip(measured, truths)]
        regularization = float(np.exp(np.median(np.log(choices))))

    images = []
    sampler = Sampler(model)  # one compiled graph for every image
    for i, ((name, truth), condition) in enumerate(zip(truths, measured)):
        out = reconstruct(model, task, condition, samples=samples, steps=steps or config.sampler.steps,
                          method=method or config.sampler.method, seed=seed, sampler=sampler)
        mean = np.asarray(out["mean"])[..., 0]
        row = {"name": name, "shape": list(truth.shape), "cvdm": score(mean, truth, d.phase_max)}
        centred_mean, centred_truth = metrics.offset_free(mean, truth)
        error = np.abs(centred_mean - centred_truth)
        row["cvdm"].update(metrics.uncertainty_correlations(np.asarray(out["std"])[..., 0],
                                                            np.asarray(out["schedule"])[..., 0], mean, truth))
        row["cvdm"]["mean_std_rad"] = float(np.mean(out["std"]))
        row["cvdm"]["mean_abs_error_rad"] = float(np.mean(error))
        if "tie" in baselines:
            tie = np.asarray(task.baseline(tf.constant(condition), regularization))[..., 0]
            row["tie"] = score(tie, truth, d.phase_max)
        images.append(row)
        if progress:
            progress(i + 1, len(truths), name)

    methods = ["cvdm"] + [b for b in baselines]
    summary = {}
    with warnings.catch_warnings():  # a rank correlation is NaN for a constant map; the mean skips it
        warnings.simplefilter("ignore", RuntimeWarning)
        for method_name in methods:
            keys = images[0][method_name].keys()
            summary[method_name] = {k: float(np.nanmean([row[method_name][k] for row in images])) for k in keys}
    return {
        "task": config.task, "noise": noise, "samples": samples, "steps": steps or config.sampler.steps,
        "sampler": method or config.sampler.method, "seed": seed, "tie_regularization": regularization,
        "images": images, "mean": summary,
    }


def markdown_table(report: dict) -> str:
    lines = ["| method | MAE (rad) | MAE ([-1, 1]) | MS-SSIM | rank corr. std~error | rank corr. schedule~error |",
             "|---|---|---|---|---|---|"]
    for method_name, values in report["mean"].items():
        std = values.get("std_vs_error")
        sched = values.get("schedule_vs_error")
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {method_name} | {values['mae_rad']:.4f} | {values['mae_paper']:.4f} | "
                     f"{values['ms_ssim']:.4f} | {fmt(std)} | {fmt(sched)} |")
    return "\n".join(lines)
