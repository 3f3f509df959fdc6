"""4x SR of natural images: CVDM against CDDPM, the regression U-Net and bicubic on held-out images, with the
paper's Table 4 (ImageNet 64 -> 256) beside it for scale.

    python benchmarks/sr_table.py --model runs/sr4x-... [--model runs/sr4x-cddpm-...] \
        [--model runs/sr4x-regression-...] [--size 128] [--per-side 3] [--samples 8] [--steps T] \
        [--data HR_FOLDER] [--out docs/results-sr.md]

Held-out images: the embedded images no run trains on (`cvdm_tf.tasks.sr4x.EVAL_IMAGES`: astronaut, coffee,
camera), each cut into `--per-side`^2 tiles of `--size` px around its centre (or every image of `--data`, whole).
Each tile is downsampled 4x with the run's kernel (antialiased, 8-bit), reconstructed by every `--model` run
(CVDM; CDDPM = a run trained with `--schedule linear` or `cosine`; the regression U-Net = `--kind regression`:
labelled from their configs) and by bicubic upsampling. Metrics as `cvdm-tf eval --task sr4x`: PSNR / SSIM on
RGB in [0, 255] and on the ITU-R BT.601 luma Y, a 4 px border shaved, the estimate rounded to 8 bits; the
spectral error of the luma (dB), which a smooth estimate loses and a posterior sample should not. Each diffusion
run is scored as the mean of its K samples, its first sample alone ("one sample"), and its point estimate where
that is another (`sampler.estimate`: "median of K", "mean network"; `--median`, `--mean-network` add them).
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

from cvdm_tf.inference import reconstruct  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402
from cvdm_tf.sampler import sampler_for  # noqa: E402
from cvdm_tf.tasks.base import Case  # noqa: E402
from cvdm_tf.tasks.sr4x import EVAL_IMAGES, embedded_color_images, to_channels  # noqa: E402

# The paper's Table 4 (ImageNet 64 -> 256, 4x): PSNR / SSIM.
PAPER = (("CVDM", 26.38, 0.76), ("SR3", 26.40, 0.76), ("DDRM", 26.55, 0.74))


def held_out_cases(task, size: int, per_side: int) -> list[Case]:
    """`per_side` x `per_side` tiles of `size` px around the centre of each held-out embedded image."""
    import tensorflow as tf

    cases = []
    for name, image in embedded_color_images():
        if name not in EVAL_IMAGES:
            continue
        image = to_channels(image, task.data.channels)
        span = min(per_side * size, image.shape[0] // size * size, image.shape[1] // size * size)
        top, left = (image.shape[0] - span) // 2, (image.shape[1] - span) // 2
        for i in range(span // size):
            for j in range(span // size):
                truth = image[top + i * size: top + (i + 1) * size, left + j * size: left + (j + 1) * size]
                low = task.low_resolution(tf.constant(truth)).numpy()
                cases.append(Case(f"{name}_{i}{j}", low, truth, group=name))
    return cases


def label(config) -> str:
    if config.model.kind == "regression":
        return f"regression U-Net (L1, {config.model.denoiser})"
    kind = {"learned": "CVDM", "learned-global": "CVDM-simple", "linear": "CDDPM (linear)",
            "cosine": "CDDPM (cosine)"}[config.model.schedule]
    around = ", around a mean network" if config.model.mean.endswith("network") else ""
    return f"{kind}, {config.model.denoiser}{around}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="run folder (repeatable)")
    parser.add_argument("--size", type=int, default=128, help="HR tile size, px")
    parser.add_argument("--per-side", type=int, default=3, help="tiles per side around each image's centre")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, help="sampling steps (default: each run's)")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], help="default: each run's")
    parser.add_argument("--antithetic", choices=["yes", "no"], help="samples in antithetic pairs (default: each run's)")
    parser.add_argument("--median", action="store_true", help="also score the per-pixel median of the K samples "
                        "(always for a run whose point estimate, sampler.estimate, it is)")
    parser.add_argument("--mean-network", action="store_true", help="also score the mean network's own estimate "
                        "(runs with one; always for a run whose point estimate it is)")
    parser.add_argument("--data", help="evaluate on these HR images instead (a folder or a file)")
    parser.add_argument("--out", help="markdown file to write (e.g. docs/results-sr.md)")
    parser.add_argument("--json", help="write the mean scores here (method -> metric)")
    args = parser.parse_args(argv)

    runs = [load_run(path) for path in args.model]
    config, task, _ = runs[0]
    columns = task.score_columns
    cases = task.eval_cases(args.data, "none", 0) if args.data else held_out_cases(task, args.size, args.per_side)
    rows, seconds = {}, {}
    for (run_config, _, model), path in zip(runs, args.model):
        name = label(run_config)
        if name in seconds:  # two runs of one kind: each its own row
            name = f"{name} ({path})"
        pairs = run_config.sampler.antithetic if args.antithetic is None else args.antithetic == "yes"
        sampler = sampler_for(model, dataclasses.replace(run_config.sampler, antithetic=pairs,
                                                         samples=args.samples))
        diffusion = run_config.model.kind != "regression"
        began = time.process_time()
        for case in cases:
            out = reconstruct(model, task, case.measurement, samples=args.samples,
                              steps=args.steps or run_config.sampler.steps,
                              method=args.sampler or run_config.sampler.method, seed=0, sampler=sampler,
                              keep_samples=diffusion, median=diffusion and args.median,
                              mean_network=diffusion and args.mean_network,
                              estimate=run_config.sampler.estimate if diffusion else "mean")
            rows.setdefault(name, []).append(task.score(out["mean"], case.truth))
            if diffusion:  # what a posterior sample should win: the truth's texture (spectral error)
                rows.setdefault(f"{name}, one sample", []).append(task.score(out["samples"][0], case.truth))
            for key, row in (("median", "median of K"), ("mean_network", "mean network")):
                if key in out:
                    rows.setdefault(f"{name}, {row}", []).append(task.score(out[key], case.truth))
        seconds[name] = (time.process_time() - began) / len(cases)
    for name, make in task.baselines().items():
        baseline = make()
        rows[name] = [task.score(baseline(case.measurement), case.truth) for case in cases]

    where = (f"every image of {args.data}" if args.data else
             f"{len(cases)} tiles of {args.size} px ({args.per_side} x {args.per_side} around the centre of each "
             f"held-out embedded image: {', '.join(EVAL_IMAGES)})")
    lines = ["# 4x super-resolution of natural images: CVDM and baselines\n",
             f"`python benchmarks/sr_table.py {' '.join(argv or sys.argv[1:])}`\n",
             f"{where}; {config.data.resampling} 4x downsampling (antialiased, 8 bits); K = {args.samples} samples, "
             f"their mean scored (and each diffusion run's first sample alone: \"one sample\"; its median, its mean "
             "network's own). PSNR / SSIM on RGB in "
             "[0, 255] and on the BT.601 luma Y, 4 px border shaved; spectral error: mean |10 log10| of the ratio of "
             "the luma's radially averaged power spectra, 1/16 of Nyquist to Nyquist. "
             "CPU seconds per tile: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()) + "\n",
             "| method | " + " | ".join(header for _, header, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, scores in rows.items():
        cells = [format(float(np.mean([s[key] for s in scores])), fmt) for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, psnr, ssim in PAPER:
        lines.append(f"| *paper Table 4: {name} (ImageNet 64 -> 256)* | {psnr:.2f} | {ssim:.2f} |"
                     + " |" * (len(columns) - 2))
    lines.append("\nThe paper's numbers (in the PSNR / SSIM RGB columns; the paper does not say whether on RGB or Y) "
                 "are for ImageNet at 256 px with the SR3 architecture trained on GPUs; the rows above are CPU-sized "
                 "models trained for minutes, tested on three held-out photographs: for scale only.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({name: {key: float(np.mean([s[key] for s in scores]))
                                                      for key, _, _ in columns} for name, scores in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
