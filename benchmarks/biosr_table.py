"""BioSR: CVDM against its baselines on held-out simulated cells (and on BioSR files when a path is given).

    python benchmarks/biosr_table.py --model runs/biosr-... [--model runs/biosr-regression-...] \
        [--cells 4] [--size 128] [--photons 100] [--samples 4] [--steps T] [--data BIOSR_FOLDER] \
        [--out docs/results-biosr.md]

Held-out cells: `--cells` per structure type, `--size` SIM px, drawn with a seed the training never uses
(training cells come from `train.seed`), imaged with the run's optics at `--photons` photons per unit density
(the middle of the training range by default; `--seed` draws another held-out set), Poisson-Gaussian noise. Methods: every `--model` run (CVDM,
CDDPM = a run trained with `--schedule linear`, the regression U-Net = `--kind regression`), Richardson-Lucy
with the task's PSF (iterations tuned on these cells' truth: an oracle) and bicubic upsampling; the widefield
input's own resolution for scale. Metrics as `cvdm-tf eval --task biosr` (and the paper's Table 1): each image
percentile-normalised to [0, 1], then MAE and MS-SSIM; resolution in nm by decorrelation analysis; the spectral
error (dB: mean |10 log10| of the ratio of radially averaged power spectra, from 1/16 of Nyquist up to the target's
MTF10, `BioSRTask.target_band_limit`), which a smooth estimate loses and a posterior sample should not. Each
diffusion run is scored as the mean of its K samples, its first sample alone ("one sample"), and its point
estimate where that is another (`sampler.estimate`: "median of K", "mean network"; `--median`, `--mean-network` add
them). Writes a markdown file with a table per structure and the paper's Table 1 beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvdm_tf import metrics  # noqa: E402
from cvdm_tf.inference import reconstruct  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import sampler_for  # noqa: E402
from cvdm_tf.tasks.base import Case  # noqa: E402
from cvdm_tf.tasks.biosr import simulated_cells  # noqa: E402

HELD_OUT_SEED = 1234
# The paper's Table 1 (DFCAN / CDDPM / CVDM): MS-SSIM, MAE, resolution (nm).
PAPER = {"ccps": ((.957, .952, .955), (.006, .007, .007), (107, 100, 96)),
         "er": ((.928, .920, .934), (.033, .033, .032), (165, 157, 152)),
         "microtubules": ((.901, .857, .887), (.033, .042, .040), (127, 101, 97)),
         "f-actin": ((.853, .831, .863), (.049, .049, .043), (151, 104, 98))}


def held_out_cases(task, per_structure, size, photons, seed):
    cases = []
    kinds = task.data.structure_list or ("ccps", "er", "microtubules", "f-actin")
    cells = simulated_cells(task, per_structure * len(kinds), size, seed)
    for index, (name, example) in enumerate(cells):
        wide = task.add_noise(tf.constant(example["widefield"][..., 0]), photons,
                              tf.constant([seed, index], tf.int64)).numpy()
        cases.append(Case(name, wide[..., None], example["target"][..., 0], group=name.rsplit("_", 1)[0]))
    return cases


def write_held_out(task, out_dir, per_structure, size, photons, seed):
    """`held_out_cases` as `cvdm-tf eval --data` reads them: OUT/wf/NAME.tif (the widefield image) and OUT/gt/NAME.tif
    (the SIM-like truth), each with its pixel size."""
    from cvdm_tf import io

    for case in held_out_cases(task, per_structure, size, photons, seed):
        io.write_tiff(Path(out_dir) / "wf" / f"{case.name}.tif", case.measurement[..., 0],
                      pixel_size_um=task.data.pixel_size_um * task.scale)
        io.write_tiff(Path(out_dir) / "gt" / f"{case.name}.tif", case.truth, pixel_size_um=task.data.pixel_size_um)


def label(config):
    if config.model.kind == "regression":
        return "regression U-Net (L1)"
    name = {"learned": "CVDM", "learned-global": "CVDM-simple", "linear": "CDDPM",
            "cosine": "CDDPM (cosine)"}[config.model.schedule]
    return name + (" around a mean network" if config.model.mean.endswith("network") else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="run folder (repeatable)")
    parser.add_argument("--cells", type=int, default=4, help="held-out cells per structure type")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--photons", type=float, help="default: the middle of the run's training range")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, help="sampling steps (default: each run's)")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], help="default: each run's")
    parser.add_argument("--antithetic", choices=["yes", "no"], help="samples in antithetic pairs (default: each run's)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="seed of the held-out cells")
    parser.add_argument("--data", help="also evaluate on these BioSR files (a BioSR folder or wf/ + gt/ pairs)")
    parser.add_argument("--out", help="markdown file to write (e.g. docs/results-biosr.md)")
    parser.add_argument("--json", help="write the mean scores over all held-out cells here (method -> metric)")
    parser.add_argument("--median", action="store_true", help="also score the per-pixel median of the K samples "
                        "(the posterior median: the estimate of least expected absolute error); always for a run "
                        "whose point estimate (sampler.estimate) it is")
    parser.add_argument("--mean-network", action="store_true", help="also score the mean network's own estimate "
                        "(runs with one; always for a run whose point estimate it is)")
    args = parser.parse_args(argv)

    runs = [load_run(path) for path in args.model]
    config, task, _ = runs[0]
    photons = args.photons or float(np.sqrt(config.data.photons_min * config.data.photons_max))
    sets = {"held-out simulated cells": held_out_cases(task, args.cells, args.size, photons, args.seed)}
    if args.data:
        sets[f"BioSR files ({args.data})"] = task.eval_cases(args.data, "none", 0)

    summary = {}
    lines = [f"# BioSR: CVDM and baselines\n\n`python benchmarks/biosr_table.py {' '.join(argv or sys.argv[1:])}`\n"]
    for title, cases in sets.items():
        scores = {}  # method -> list of (group, score)
        baselines = {name: make() for name, make in task.baselines().items()}
        for baseline in baselines.values():
            baseline.tune(cases)
        seconds = {}
        for (run_config, _, model), path in zip(runs, args.model):
            name = label(run_config)
            if name in seconds:  # two runs of one kind: each its own row
                name = f"{name} ({path})"
            pairs = run_config.sampler.antithetic if args.antithetic is None else args.antithetic == "yes"
            sampler = sampler_for(model, dataclasses.replace(run_config.sampler, antithetic=pairs,
                                                             samples=args.samples))
            began = time.process_time()
            diffusion = run_config.model.kind != "regression"
            for case in cases:
                out = reconstruct(model, task, case.measurement, samples=args.samples,
                                  steps=args.steps or run_config.sampler.steps,
                                  method=args.sampler or run_config.sampler.method,
                                  seed=0, sampler=sampler, keep_samples=diffusion, median=diffusion and args.median,
                                  mean_network=diffusion and args.mean_network,
                                  estimate=run_config.sampler.estimate if diffusion else "mean")
                scores.setdefault(name, []).append((case.group, task.score(out["mean"][..., 0], case.truth)))
                if diffusion:  # what a posterior sample should win: the truth's texture (spectral error)
                    scores.setdefault(f"{name}, one sample", []).append(
                        (case.group, task.score(out["samples"][0, ..., 0], case.truth)))
                for key, row in (("median", "median of K"), ("mean_network", "mean network")):
                    if key in out:
                        scores.setdefault(f"{name}, {row}", []).append(
                            (case.group, task.score(out[key][..., 0], case.truth)))
            seconds[name] = (time.process_time() - began) / len(cases)
        for name, baseline in baselines.items():
            for case in cases:
                scores.setdefault(name, []).append((case.group, task.score(baseline(case.measurement), case.truth)))
        pixel_nm = task.data.pixel_size_um * 1000
        widefield_res = [(case.group, metrics.decorrelation_resolution(case.measurement[..., 0].astype(np.float64),
                                                                        2 * pixel_nm)) for case in cases]
        truth_res = [(case.group, metrics.decorrelation_resolution(case.truth.astype(np.float64), pixel_nm))
                     for case in cases]
        groups = sorted({case.group for case in cases})
        lines.append(f"\n## {title}\n\n{len(cases)} images"
                     + (f" ({args.cells} per structure, {args.size} px on the SIM grid, {photons:.0f} photons per "
                        f"unit density)" if title.startswith("held-out") else "")
                     + f"; K = {args.samples} samples. CPU seconds per image: "
                     + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()) + "\n")
        for group in groups + ["all"]:
            pick = lambda rows: [s for g, s in rows if group in (g, "all")]  # noqa: E731
            lines.append(f"\n### {group}\n\n| method | MAE | PSNR | SSIM | MS-SSIM | spectral error (dB) | "
                         "resolution (nm) |\n|---|---|---|---|---|---|---|")
            for name, rows in scores.items():
                chosen = pick(rows)
                mean = {k: float(np.nanmean([s[k] for s in chosen])) for k in chosen[0]}
                if group == "all" and title.startswith("held-out"):
                    summary[name] = mean
                lines.append(f"| {name} | {mean['mae']:.4f} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | "
                             f"{mean['ms_ssim']:.4f} | {mean['spectral_db']:.2f} | {mean['resolution_nm']:.0f} |")
            wide = np.nanmean([r for g, r in widefield_res if group in (g, "all")])
            truth = np.nanmean([r for g, r in truth_res if group in (g, "all")])
            lines.append(f"| widefield input (for scale) | | | | | | {wide:.0f} |")
            lines.append(f"| SIM-like truth (for scale) | | | | | 0 | {truth:.0f} |")
            if group in PAPER:
                ms, mae, res = PAPER[group]
                lines.append(f"| *paper, DFCAN / CDDPM / CVDM* | {mae[0]} / {mae[1]} / {mae[2]} | | | "
                             f"{ms[0]} / {ms[1]} / {ms[2]} | | {res[0]} / {res[1]} / {res[2]} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
