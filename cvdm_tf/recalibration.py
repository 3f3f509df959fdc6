"""Recalibrating a K-sample std map on validation images: a scale per level of the image, fitted once per run.

Notation (cvdm-math.md section 10, `metrics.calibration`):

| symbol | meaning |
|---|---|
| m, s | the mean and std of the K samples at a pixel (s: ddof 1; antithetic pairs: ddof 0) |
| x | the truth |
| c_K | sqrt(1 + 1/K) (1 for antithetic pairs): the spread of m - x in units of s for a calibrated sampler |
| l | the pixel's level in its image, (m - min m) / (max m - min m), in [0, 1] |
| a_b | the scale of level bin b (B equal bins of l) |

A calibrated sampler puts |m - x| <= c_K s and <= 2 c_K s at the rates of a Student-t
(`metrics.calibration_targets`). A sampler trained at a CPU budget does not: BioSR's spreads its samples too
widely on the dark background and too narrowly on the structures (docs/results-biosr.md), so one factor cannot
mend both, and a scale per std bin cannot either (at one std the background's errors are still the smaller).
The recalibrated map is a_b s, with a_b the factor that brings the coverage at 1 and 2 c_K a_b s of the
validation pixels of bin b closest to the targets (least squares over a grid of factors). Within a bin the ranks
of the map are kept. It describes the error of the samples' mean, as the coverage is judged.

A fit holds for one sampler setting (K, T, method, antithetic): the std of K samples, and how far it is off,
change with each. `cvdm-tf calibrate` fits one; infer writes NAME_std_recalibrated.tif where the setting
matches (the raw map NAME_std.tif is kept).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from cvdm_tf.errors import InputError

FILE = "recalibration.json"
BINS = 10
#: Fewer validation pixels than this in a bin: the bin takes the factor fitted on all pixels.
MIN_PIXELS = 100
_FACTORS = np.exp(np.linspace(np.log(1 / 20), np.log(20), 1201))  # 0.25% apart


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """Factors a_b of the std map for the level bins b = 0 .. B - 1 of one sampler setting.

    Attributes:
        scales: a_b, bin b holding levels in [b / B, (b + 1) / B) (the last one also 1).
        samples, steps, method, antithetic: the sampler setting it was fitted at (K, T, ddpm / ddim, pairs).
        images: how many validation images it was fitted on; data: what they were.
    """

    scales: tuple
    samples: int
    steps: int
    method: str
    antithetic: bool
    images: int
    data: str = ""

    def matches(self, samples: int, steps: int, method: str, antithetic: bool) -> bool:
        return (self.samples, self.steps, self.method, self.antithetic) == (samples, steps, method, antithetic)

    def setting(self) -> str:
        return f"K = {self.samples}, T = {self.steps} {self.method}" + (", antithetic" if self.antithetic else "")

    def label(self) -> str:
        """What the recalibrated map is, for its metadata."""
        return f"std recalibrated on {self.images} validation image(s) at {self.setting()}"

    def apply(self, std, mean) -> np.ndarray:
        """a_b s: the std map `std` scaled by the factor of each pixel's level in `mean` (same shape)."""
        std = np.asarray(std)
        bins = level_bins(mean, len(self.scales))
        return (std * np.asarray(self.scales, np.float64)[bins]).astype(std.dtype)


def level_bins(mean, bins: int = BINS) -> np.ndarray:
    """The bin of each pixel's level l = (m - min m) / (max m - min m) in its image (all channels together); a
    flat image is all level 0. Unchanged by an offset or a positive scale of the image (QPI's centring, BioSR's
    percentile normalisation)."""
    mean = np.asarray(mean, np.float64)
    low, high = np.min(mean), np.max(mean)
    level = (mean - low) / (high - low) if high > low else np.zeros_like(mean)
    return np.clip((level * bins).astype(np.int64), 0, bins - 1)


def best_factor(z, samples: int, antithetic: bool) -> float:
    """The factor a minimising (P(z <= a) - target_1)^2 + (P(z <= 2a) - target_2)^2 over the pixels' normalised
    errors z = |m - x| / (c_K s)."""
    from cvdm_tf.metrics import calibration_targets

    target_1, target_2 = calibration_targets(samples, antithetic)
    z = np.sort(np.ravel(z))
    within = lambda bound: np.searchsorted(z, bound, side="right") / z.size  # noqa: E731
    loss = (within(_FACTORS) - target_1) ** 2 + (within(2 * _FACTORS) - target_2) ** 2
    return float(_FACTORS[int(np.argmin(loss))])


def fit(stds, errors, means, samples: int, steps: int, method: str, antithetic: bool, bins: int = BINS,
        data: str = "") -> Recalibration:
    """The factors of one sampler setting from validation images.

    Args:
        stds, errors, means: lists over images of arrays of one shape each: the std map s, the error of the
            samples' mean m - x (centred as the task scores it, `task.centre`, the std likewise,
            `task.centre_spread`) and the samples' mean m (its levels pick the bins).
        samples, steps, method, antithetic: the setting the maps were sampled at (K >= 2).
        bins: B.
        data: what the images were (kept in the file).
    """
    if samples < 2:
        raise InputError("a std map needs K >= 2 samples to recalibrate")
    from cvdm_tf.metrics import spread_of_error

    c_k = spread_of_error(samples, antithetic)
    z = np.concatenate([np.ravel(np.abs(e) / np.maximum(c_k * np.asarray(s, np.float64), np.finfo(float).tiny))
                        for s, e in zip(stds, errors)])
    level = np.concatenate([np.ravel(level_bins(m, bins)) for m in means])
    overall = best_factor(z, samples, antithetic)
    scales = tuple(best_factor(z[level == b], samples, antithetic) if np.sum(level == b) >= MIN_PIXELS else overall
                   for b in range(bins))
    return Recalibration(scales=scales, samples=samples, steps=steps, method=method, antithetic=antithetic,
                         images=len(stds), data=data)


def load(folder) -> list[Recalibration]:
    """The fits of a run or built-in model folder (FOLDER/recalibration.json; none: [])."""
    path = Path(folder) / FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["fits"]
        fits = [Recalibration(**{**entry, "scales": tuple(float(a) for a in entry["scales"])}) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a recalibration file of cvdm-tf calibrate ({err})") from None
    for entry in fits:
        if not entry.scales or not all(np.isfinite(a) and a > 0 for a in entry.scales):
            raise InputError(f"{path}: a recalibration factor is not a positive number")
    return fits


def of_run(spec) -> list[Recalibration]:
    """The fits of a run folder or a built-in model (`builtin:NAME`)."""
    from cvdm_tf import builtin

    return load(builtin.folder(spec) if builtin.is_builtin(spec) else spec)


def save(recalibration: Recalibration, folder) -> Path:
    """Add `recalibration` to FOLDER/recalibration.json, replacing a fit of the same setting (written atomically)."""
    path = Path(folder) / FILE
    others = [entry for entry in load(folder) if not entry.matches(recalibration.samples, recalibration.steps,
                                                                   recalibration.method, recalibration.antithetic)]
    fits = [dataclasses.asdict(entry) for entry in [*others, recalibration]]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"fits": fits}, indent=1) + "\n")
    os.replace(partial, path)
    return path


def find(fits, sampler, samples: int | None = None, steps: int | None = None,
         method: str | None = None) -> Recalibration | None:
    """The fit among `fits` for K, T and method (None: those of `sampler`, the run's `SamplerConfig`) and the
    sampler's antithetic pairs, or None."""
    setting = (samples or sampler.samples, steps or sampler.steps, method or sampler.method, sampler.antithetic)
    return next((entry for entry in fits if entry.matches(*setting)), None)


def fit_run(config, task, model, data, samples: int, steps: int, method: str, seed: int = 0, bins: int = BINS,
            progress=None, described: str = "", reader_options: dict | None = None) -> Recalibration:
    """Sample every case of `data` (what `cvdm-tf eval --data` reads, with the task's `reader_options`) at the
    setting and fit its factors; `described`: what the data are, for the file (default: its path)."""
    from cvdm_tf.evaluation import scored_image
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.sampler import sampler_for

    sampler = sampler_for(model, config.sampler)
    cases = task.eval_cases(data, getattr(task.data, "noise", "none"), seed, **(reader_options or {}))
    if not cases:
        raise InputError(f"{data}: no validation images")
    stds, errors, means = [], [], []
    for index, case in enumerate(cases):
        out = reconstruct(model, task, case.measurement, samples=samples, steps=steps, method=method, seed=seed,
                          sampler=sampler)
        mean, std = scored_image(out["mean"]), scored_image(out["std"])
        centred, truth = task.centre(mean, np.asarray(case.truth))
        stds.append(task.centre_spread(std, mean))
        errors.append(centred - truth)
        means.append(mean)
        if progress:
            progress(index + 1, len(cases), case.name)
    return fit(stds, errors, means, samples, steps, method, config.sampler.antithetic, bins,
               data=described or f"{os.fspath(data)} ({len(cases)} image(s), sampler seed {seed})")
