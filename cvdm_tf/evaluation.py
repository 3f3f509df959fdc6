"""`cvdm-tf eval`: reconstruct measurements with a model and with the task's classical baselines, score them all.

For each evaluation case of the task (`task.eval_cases`: QPI simulates measurements from ground-truth phase
images; BioSR reads measured widefield / SIM pairs, or simulates them from structure images):
    1. the truth in physical units, and the raw measurement;
    2. reconstructions: the model (its point estimate, `sampler.estimate`: the mean of K samples, their median or
       the mean network's; with the std and schedule maps of the samples) and each baseline (tuned
       once on all cases first: an oracle where the baseline's parameter is chosen on the truth, so it is the
       best that baseline can do);
    3. the task's metrics against the truth (`task.score`: MAE, PSNR, SSIM and MS-SSIM for every task, plus its
       own, e.g. resolution for microscopy), and for the model the rank correlations of its std and schedule maps
       with the error of the samples' mean, and the calibration of that std (both centred the way the task
       scores: offset-free for QPI).
"""

from __future__ import annotations

import warnings

import numpy as np

from cvdm_tf import metrics
from cvdm_tf.errors import InputError


def evaluate(config, task, model, data_path, noise=None, samples=4, steps=None, method=None, seed=0,
             baselines=None, baseline_options=None, compare=None, reader_options=None, progress=None,
             recalibration=None) -> dict:
    """Per-image and mean metrics of the model and the task's baselines on the cases in `data_path`.

    Args:
        config, task, model: a run, as `cvdm_tf.runs.load_run` gives it.
        data_path: path. What the task evaluates on (QPI: ground-truth phase images).
        noise: str or None. The task's noise model for simulated measurements (default: the config's).
        samples, steps, method, seed: K, T, "ddpm" / "ddim" and the seed of the model's sampler.
        baselines: names of the task's baselines (default: all of them).
        baseline_options: dict name -> dict of keyword arguments of that baseline (e.g. a fixed parameter).
        compare: dict label -> (config, model) of other runs of the same task (e.g. the regression U-Net, a CDDPM),
            reconstructed with their own sampler settings and scored alike.
        reader_options: dict of the task's reader options (QPI: a z-stack's z_step_um, ...).
        progress: callable(i, n, name) or None.
        recalibration: `cvdm_tf.recalibration.Recalibration` of this sampler setting or None. Also score the
            recalibrated std map (`recalibrated_within_1_std`, `_within_2_std`, `recalibrated_std_vs_error`).
    """
    from cvdm_tf.sampler import sampler_for

    for label, (other, _) in (compare or {}).items():
        if other.task != config.task:
            raise InputError(f"--compare {label}: a run of task {other.task!r}, not {config.task!r}")
    available = task.baselines()
    baselines = list(available) if baselines is None else list(baselines)
    for name in baselines:
        if name not in available:
            raise InputError(f"unknown baseline {name!r} for task {task.name} (known: {', '.join(available)})")
    task.check_physics()
    noise = noise or getattr(task.data, "noise", "none")
    if noise not in task.noise_models:
        raise InputError(f"--noise: {noise!r} is not a noise model of task {task.name} "
                         f"({', '.join(task.noise_models)})")
    cases = task.eval_cases(data_path, noise, seed, **(reader_options or {}))
    if not cases:
        raise InputError(f"{data_path}: nothing to evaluate")
    methods = {name: available[name](**(baseline_options or {}).get(name, {})) for name in baselines}
    tuned = {}
    for baseline in methods.values():
        tuned.update(baseline.tune(cases))

    steps = steps or config.sampler.steps
    method = method or config.sampler.method
    images = []
    sampler = sampler_for(model, config.sampler)  # one compiled graph for every image
    others = {label: (other, other_model, sampler_for(other_model, other.sampler))
              for label, (other, other_model) in (compare or {}).items()}
    for i, case in enumerate(cases):
        out = _reconstruct(config, model, task, case.measurement, samples=samples, steps=steps,
                           method=method, seed=seed, sampler=sampler)
        mean = scored_image(out["mean"])
        truth = np.asarray(case.truth)
        row = {"name": case.name, "group": case.group, "shape": list(truth.shape),
               "cvdm": task.score(scored_image(out[config.sampler.estimate]), truth)}
        # The error the maps should track, centred as the task scores it (QPI: each image's mean phase removed).
        centred_mean, centred_truth = task.centre(mean, truth)
        row["cvdm"].update(metrics.uncertainty_correlations(scored_image(out["std"]), scored_image(out["schedule"]),
                                                            centred_mean, centred_truth))
        # Calibration: is the truth within 1 and 2 std of the mean as often as for a calibrated sampler (Student-t)?
        row["cvdm"].update(metrics.calibration(task.centre_spread(scored_image(out["std"]), mean),
                                               centred_mean - centred_truth, samples, seed,
                                               antithetic=config.sampler.antithetic))
        if recalibration is not None:
            spread = task.centre_spread(recalibration.apply(scored_image(out["std"]), mean), mean)
            judged = metrics.calibration(spread, centred_mean - centred_truth, samples, seed,
                                         antithetic=config.sampler.antithetic)
            row["cvdm"].update(recalibrated_within_1_std=judged["within_1_std"],
                               recalibrated_within_2_std=judged["within_2_std"],
                               recalibrated_std_vs_error=metrics.rank_correlation(
                                   spread, np.abs(centred_mean - centred_truth)))
        row["cvdm"]["mean_std"] = float(np.mean(out["std"]))
        row["cvdm"]["mean_abs_error"] = float(np.mean(np.abs(centred_mean - centred_truth)))
        for label, (other, other_model, other_sampler) in others.items():
            result = _reconstruct(other, other_model, task, case.measurement, samples=samples,
                                  steps=other.sampler.steps, method=other.sampler.method, seed=seed,
                                  sampler=other_sampler)
            row[label] = task.score(scored_image(result[other.sampler.estimate]), truth)
        for name, baseline in methods.items():
            row[name] = task.score(baseline(case.measurement), truth)
        images.append(row)
        if progress:
            progress(i + 1, len(cases), case.name)

    return {
        "task": config.task, "noise": noise, "samples": samples, "steps": steps, "sampler": method, "seed": seed,
        "estimate": config.sampler.estimate,
        "precision": getattr(sampler, "precision", "float32"),
        **tuned, "images": images, "mean": _means(images, ["cvdm", *others, *methods]),
        "groups": {group: _means([row for row in images if row["group"] == group], ["cvdm", *others, *methods])
                   for group in sorted({row["group"] for row in images}) if group},
    }


def _reconstruct(config, model, task, measurement, **options) -> dict:
    """`inference.reconstruct` with the run's point estimate (`config.sampler.estimate`) among the outputs."""
    from cvdm_tf.inference import reconstruct

    return reconstruct(model, task, measurement, estimate=config.sampler.estimate, **options)


def scored_image(values) -> np.ndarray:
    """An output [H, W, C] as the task scores it: [H, W] for one channel, all channels otherwise."""
    values = np.asarray(values)
    return values[..., 0] if values.shape[-1] == 1 else values


def _means(rows, methods) -> dict:
    summary = {}
    with warnings.catch_warnings():  # a rank correlation is NaN for a constant map; the mean skips it
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in methods:
            keys = rows[0][name].keys()
            summary[name] = {k: float(np.nanmean([row[name][k] for row in rows])) for k in keys}
    return summary


def markdown_table(report: dict, columns) -> str:
    """The report's mean metrics as a markdown table; `columns` are the task's (key, header, format) triples."""
    extra = (("std_vs_error", "rank corr. std~error", ".3f"),
             ("std_vs_error_ceiling", "(calibrated ceiling)", ".3f"),
             ("within_1_std", "within 1 std", ".3f"), ("within_1_std_target", "(calibrated: Student-t)", ".3f"),
             ("within_2_std", "within 2 std", ".3f"), ("within_2_std_target", "(calibrated)", ".3f"),
             ("schedule_vs_error", "rank corr. schedule~error", ".3f"))
    if any("recalibrated_within_1_std" in values for values in report["mean"].values()):
        extra += (("recalibrated_within_1_std", "recalibrated: within 1 std", ".3f"),
                  ("recalibrated_within_2_std", "within 2 std", ".3f"))
    columns = tuple(columns) + extra
    lines = ["| method | " + " | ".join(header for _, header, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, values in report["mean"].items():
        cells = [format(values[key], fmt) if key in values and np.isfinite(values[key]) else ""
                 for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
