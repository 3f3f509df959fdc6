"""Regenerate a built-in model (`cvdm_tf/builtin/NAME/`) from a run of the project's default training command.

    python scripts/builtin_models.py --name qpi   --run runs/qpi-default   [--train]
    python scripts/builtin_models.py --name biosr --run runs/biosr-default [--train]
    python scripts/builtin_models.py --name qpi|biosr --recalibrate-only

1. `--train`: train the run first with the default command (`cvdm-tf train --task NAME --out RUN`), unless it is
   complete already. The default configs are seeded, so this reproduces the shipped model up to TensorFlow's
   non-deterministic CPU kernels.
2. Ship the run's EMA weights (no optimizer state) and its config.
3. Write the small held-out set of the card's check (never seen in training: QPI cell phantoms, which are not
   natural images; BioSR cells drawn with a seed the training never uses) and score the model and the task's
   oracle-tuned classical baseline on it with `cvdm_tf.evaluation.evaluate`, exactly as `cvdm-tf eval` does.
4. Run the task's held-out benchmark (`benchmarks/qpi_vs_tie.py`, `benchmarks/biosr_table.py`) on the shipped
   model and write its result into the card.
5. QPI, BioSR: fit the std map's recalibration (`cvdm_tf.recalibration`) on 64 validation images (seed 4321,
   never the benchmark's test images) at the card's sampler (BioSR: also at K = 8, T = 10); `--recalibrate-only`:
   this step alone, on the shipped model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from cvdm_tf import builtin, io  # noqa: E402
from cvdm_tf.evaluation import evaluate  # noqa: E402
from cvdm_tf.runs import load_run  # noqa: E402

HELD_OUT_SEED = 4321  # the benchmarks use 1234; the check set is another draw

# What each built-in model is, and how its check and benchmark are made.
MODELS = {
    "qpi": dict(
        title="quantitative phase from a defocused intensity pair of a camera frame (TIE corrected by a mean "
              "network, the diffusion on the residual)",
        training_data="the grey images embedded in scikit-image but astronaut, camera, cell and coins (held out) and "
                      "64 synthetic cell phantoms (65 train / 11 validation), as phase; each pair the centre of a "
                      "field twice as wide, through a microscope drawn from the training range, the paper's noise",
        baseline="tie", metric="mae_rad", unit="rad",
        check_set="4 camera frames of 64 px, the centres of cell-phantom fields of 128 px (held out: drawn with a "
                  "seed the training phantoms never use), the paper's noise, the default microscope",
        # The check's frames: `cvdm-tf eval --camera-crop 64` on the shipped 128 px fields.
        check_data=dict(camera_crop=64), check_field=128,
        benchmark_set="12 camera frames of 128 px (8 cell fields, 4 held-out natural images), the default "
                      "microscope, the paper's noise",
        benchmark_command="python benchmarks/qpi_vs_tie.py --model builtin:qpi --microscope default",
        # 8 denoiser passes, chosen on validation camera frames (seed 4321), never the test frames: K = 4 antithetic
        # x T = 2 within 0.5% of the config's K = 32 x T = 10 (docs/results-qpi-camera.md). Not part of the weights.
        sampler=dict(method="ddpm", steps=2, samples=4, antithetic=True, discretisation="exact"),
        # The std map's recalibration: (K, T) settings, validation camera frames (cell fields only: the test
        # frames include held-out natural images) and their size.
        recalibrate=dict(settings=[(4, 2)], images=64, size=128),
    ),
    "biosr": dict(
        title="super-resolution microscopy, widefield -> SIM-like on the 2x grid",
        training_data="41 + 7 simulated cells (CCPs, ER, microtubules, F-actin; 256 px, emission 525 nm, NA 1.3, "
                      "31.3 nm SIM pixels, 20-500 photons, Poisson-Gaussian noise), `cvdm-tf simulate --task biosr` physics",
        baseline="richardson-lucy", metric="mae", unit="",
        check_set="4 simulated cells (one per structure), 64 px, drawn with a held-out seed",
        benchmark_set="16 held-out simulated cells (4 per structure), 128 px",
        benchmark_command="python benchmarks/biosr_table.py --model builtin:biosr --cells 4 --size 128 "
                          "--samples 4 --median",
        # 16 denoiser passes, chosen on validation cells (seed 4321), never the test cells: K = 4 antithetic x T = 4
        # beat the config's K = 8 x T = 50 (docs/results-biosr.md). The config's T = 50 stays the training's. The
        # point estimate, the mean network's (L1: the median), was chosen on the same cells over two training seeds
        # (MAE 0.0198 / 0.0199; the samples' median 0.0214 / 0.0245, their mean 0.0221 / 0.0261).
        sampler=dict(method="ddpm", steps=4, samples=4, antithetic=True, estimate="mean_network"),
        # The std map's recalibration: (K, T) settings, validation cells per structure and their size.
        recalibrate=dict(settings=[(4, 4), (8, 10)], images=64, size=128),
    ),
    "sr4x": dict(
        title="4x super-resolution of natural images (colour)",
        training_data="the colour and grey images embedded in scikit-image but astronaut, coffee and camera "
                      "(held out), bicubic 4x downsampling",
        baseline="bicubic", metric="psnr_rgb", unit="dB",
        check_set="4 tiles of 128 px from the held-out astronaut, coffee and camera",
        check_size=128,  # SR of 64 px tiles (16 px inputs) is mostly border
        benchmark_set="12 tiles of 128 px of the held-out astronaut, coffee and camera",
        benchmark_command="python benchmarks/sr_table.py --model builtin:sr4x --size 128 --per-side 2 --samples 4",
        # Chosen on the run's two validation images, never the test images (docs/results-sr.md): 16 denoiser passes,
        # K = 4 antithetic x T = 4, score as the former 10 DDIM steps x K = 8 (and better than the config's 50 DDPM
        # steps). The sampler is not part of the trained weights. The point estimate, the mean network's E[x|y], was
        # chosen on the same validation images (docs/results-sr.md).
        sampler=dict(method="ddpm", steps=4, samples=4, antithetic=True, estimate="mean_network"),
    ),
}
CHECK = dict(images=4, size=64, samples=4, seed=0)


def write_check_set(name, task, out_dir: Path):
    """The held-out set of the check, as files `cvdm-tf eval --data` reads."""
    if name == "qpi":
        from cvdm_tf.data.phantoms import cell_phantoms

        size = MODELS[name].get("check_field", CHECK["size"])
        for i, phase in enumerate(cell_phantoms(CHECK["images"], size, seed=HELD_OUT_SEED,
                                                peak=task.data.phase_max * 0.85)):
            io.write_tiff(out_dir / f"phantom{i}.tif", phase.astype(np.float32))  # float: radians
    elif name == "sr4x":
        from sr_table import held_out_cases

        cases = held_out_cases(task, MODELS[name].get("check_size", CHECK["size"]), 2)
        for case in cases[:: max(1, len(cases) // CHECK["images"])][: CHECK["images"]]:
            io.write_tiff(out_dir / f"{case.name}.tif", np.round(case.truth * 255.0).astype(np.uint8))
    else:
        from biosr_table import write_held_out

        photons = float(np.sqrt(task.data.photons_min * task.data.photons_max))
        write_held_out(task, out_dir, max(1, CHECK["images"] // 4), CHECK["size"], photons, HELD_OUT_SEED)


def check_scores(spec, samples=CHECK["samples"], seed=CHECK["seed"]) -> dict:
    """The card's check: the model and the task's oracle-tuned baseline on the shipped held-out set."""
    config, task, model = load_run(spec)
    c = builtin.card(spec) if builtin.is_builtin(spec) else None
    baseline = (c["check"]["baseline"] if c else MODELS[config.task]["baseline"])
    task = builtin.check_task(spec, task)
    report = evaluate(config, task, model, builtin.heldout(spec), samples=samples, seed=seed, baselines=[baseline])
    metric = MODELS[config.task]["metric"]
    return {"cvdm": report["mean"]["cvdm"][metric], baseline: report["mean"][baseline][metric]}


def run_benchmark(name) -> str:
    """The task's held-out benchmark on the shipped model, as one line for the card."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.json"
        if name == "qpi":
            import qpi_vs_tie
            results = qpi_vs_tie.main(["--model", "builtin:qpi", "--microscope", "default", "--json", str(out)])
            rows = next(iter(results["microscopes"].values()))
            noisy, clean = rows["paper"], rows["none"]
            model = "CVDM + step" if "CVDM + step" in noisy else "CVDM"
            tie = lambda row: min(row["TIE (FFT)"]["mae"], row["TIE (DCT)"]["mae"])  # noqa: E731
            padded = "TIE (zero-padded FFT)"
            return (f"MAE {noisy[model]['mae']:.4f} rad, MS-SSIM {noisy[model]['ms_ssim']:.3f} with noise "
                    f"(oracle FFT- / DCT-TIE {tie(noisy):.4f} rad, zero-padded TIE {noisy[padded]['mae']:.4f}); "
                    f"noise-free {clean[model]['mae']:.4f} rad (oracle FFT- / DCT-TIE {tie(clean):.4f}, "
                    f"zero-padded {clean[padded]['mae']:.4f})")
        if name == "sr4x":
            import sr_table

            sr_table.main(MODELS[name]["benchmark_command"].split()[2:] + ["--json", str(out)])
            scores = json.loads(out.read_text())
            cvdm = _estimate_row(scores, "sr4x", sr_table.label)
            return (f"PSNR {cvdm['psnr_rgb']:.2f} dB / SSIM {cvdm['ssim_rgb']:.3f} on RGB (bicubic "
                    f"{scores['bicubic']['psnr_rgb']:.2f} / {scores['bicubic']['ssim_rgb']:.3f}), {cvdm['psnr_y']:.2f} "
                    f"dB on Y (bicubic {scores['bicubic']['psnr_y']:.2f})")
        import biosr_table

        biosr_table.main(MODELS[name]["benchmark_command"].split()[2:] + ["--json", str(out)])
        scores = json.loads(out.read_text())
        rl, bicubic = scores["richardson-lucy"], scores["bicubic"]
        cvdm = next(v for k, v in scores.items() if k.startswith("CVDM"))  # e.g. "CVDM around a mean network"
        estimate = _estimate_row(scores, "biosr", biosr_table.label)
        return (f"MAE {estimate['mae']:.4f}, MS-SSIM {estimate['ms_ssim']:.3f} "
                + (f"(the mean of the samples: MAE {cvdm['mae']:.4f}) " if estimate is not cvdm else "")
                + f"(oracle Richardson-Lucy {rl['mae']:.4f} / {rl['ms_ssim']:.3f}, bicubic {bicubic['mae']:.4f} / "
                f"{bicubic['ms_ssim']:.3f})")


def _estimate_row(scores: dict, name: str, label) -> dict:
    """The benchmark's row of the model's point estimate (its sampler's `estimate`): the run's row (`label`) is the
    mean of its samples, "LABEL, median of K" and "LABEL, mean network" the others."""
    config = load_run(f"builtin:{name}")[0]
    suffix = {"mean": "", "median": ", median of K", "mean_network": ", mean network"}[config.sampler.estimate]
    return scores[label(config) + suffix]


def toml_card(card: dict) -> str:
    """card.toml text: top-level strings and numbers, then one table per dict (one level of nesting)."""
    def value(v):
        return json.dumps(v) if isinstance(v, str) else repr(v)

    lines = [f"{k} = {value(v)}" for k, v in card.items() if not isinstance(v, dict)]
    for table, entries in ((k, v) for k, v in card.items() if isinstance(v, dict)):
        lines.append(f"\n[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in entries.items() if not isinstance(v, dict)]
        for sub, inner in ((k, v) for k, v in entries.items() if isinstance(v, dict)):
            lines.append(f"\n[{table}.{sub}]")
            lines += [f'"{k}" = {value(v)}' for k, v in inner.items()]
    return "\n".join(lines) + "\n"


def recalibrate(name, out_dir: Path):
    """Fit the std map's recalibration of the shipped model at each of its settings (`MODELS[name]["recalibrate"]`)
    on validation images drawn with `HELD_OUT_SEED` (never the benchmarks' test images), into
    OUT_DIR/recalibration.json. QPI: camera frames, the centres of cell fields twice as wide; BioSR: simulated
    cells, a quarter per structure, at the middle of the training photon range."""
    import dataclasses

    from cvdm_tf import recalibration
    from cvdm_tf.tasks import make_task

    plan = MODELS[name]["recalibrate"]
    config, task, model = load_run(f"builtin:{name}")
    size, images = plan["size"], plan["images"]
    with tempfile.TemporaryDirectory() as tmp:
        if config.task == "qpi":
            from cvdm_tf.tasks.qpi import camera_fields

            for field, phase in camera_fields(images, 2 * size, config.data.pixel_size_um, HELD_OUT_SEED,
                                              config.data.phase_max, natural=()):
                io.write_tiff(Path(tmp) / f"{field}.tif", phase.astype(np.float32))
            task = make_task(task.name, dataclasses.replace(task.data, camera_crop=size, boundary="camera"))
            described = (f"{images} validation camera frames ({size} px, the centres of cell-phantom fields of "
                         f"{2 * size} px, seed {HELD_OUT_SEED}), the run's noise and microscope")
        else:
            from biosr_table import write_held_out

            photons = float(np.sqrt(config.data.photons_min * config.data.photons_max))
            write_held_out(task, tmp, images // 4, size, photons, HELD_OUT_SEED)
            described = (f"{images} simulated validation cells ({images // 4} per structure, {size} px, "
                         f"{photons:.0f} photons, seed {HELD_OUT_SEED}: benchmarks/biosr_table.py)")
        for samples, steps in plan["settings"]:
            fit = recalibration.fit_run(config, task, model, tmp, samples, steps, config.sampler.method,
                                        described=described)
            recalibration.save(fit, out_dir)
            print(f"{fit.label()}: factors " + " ".join(f"{a:.2f}" for a in fit.scales))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, choices=sorted(MODELS))
    parser.add_argument("--run", help="run folder of `cvdm-tf train --task NAME` (default config)")
    parser.add_argument("--train", action="store_true", help="train the run first with the default command")
    parser.add_argument("--commit", help="commit that trained the run (default: this checkout's HEAD)")
    parser.add_argument("--training-cost", default="", help="e.g. '6000 steps, 16 min on 2 CPU cores'")
    parser.add_argument("--recalibrate-only", action="store_true", help="only step 5, on the shipped model")
    args = parser.parse_args(argv)
    spec = MODELS[args.name]
    if args.recalibrate_only:
        recalibrate(args.name, builtin.ROOT / args.name)
        return 0
    if not args.run:
        parser.error("--run is required (but with --recalibrate-only)")
    if args.train:
        subprocess.run(["cvdm-tf", "train", "--task", args.name, "--out", args.run]
                       + (["--resume"] if Path(args.run).exists() else []), check=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip()
    config, task, model = load_run(args.run)
    resampled = "sampler" in spec and config.replace(sampler=spec["sampler"]).sampler != config.sampler
    if resampled:
        config = config.replace(sampler=spec["sampler"])
    out_dir = builtin.ROOT / args.name
    shutil.rmtree(out_dir, ignore_errors=True)
    builtin.save(config, model, out_dir)
    write_check_set(args.name, task, out_dir / "heldout")
    card = {"name": args.name, "task": config.task, "title": spec["title"],
            "trained_with": f"cvdm-tf train --task {args.name}", "commit": commit,
            "training_cost": args.training_cost or f"{config.train.steps} steps",
            "training_data": spec["training_data"], "parameters": int(model.count_params()),
            "sampler": f"{config.sampler.steps} {config.sampler.method} steps, K = {config.sampler.samples}"
                       + (" in antithetic pairs" if config.sampler.antithetic else "")
                       + (" (chosen on validation images; the run's config had another)" if resampled else "")
                       + {"mean": "", "median": "; the point estimate is their per-pixel median (NAME_median)",
                          "mean_network": "; the point estimate is the mean network's "
                                          f"{config.model.mean_network_estimate} (NAME_mean_network)"}[
                           config.sampler.estimate]
                       + (f", then {task.data.data_consistency} data-consistency step(s)" if task.refines else ""),
            **({"physics_range": task.data.training_range.describe()} if hasattr(task.data, "training_range") else {}),
            "check": {"set": spec["check_set"], "baseline": spec["baseline"], "metric": spec["metric"],
                      **({"data": spec["check_data"]} if "check_data" in spec else {}),
                      "better": "higher" if spec["metric"].startswith(("psnr", "ssim")) else "lower",
                      "samples": CHECK["samples"], "seed": CHECK["seed"],
                      "tolerance": 0.01 if spec["metric"].startswith("psnr") else 0.05, "scores": {}},
            "benchmark": {"set": spec["benchmark_set"], "command": spec["benchmark_command"], "result": ""}}
    io.write_text(out_dir / "card.toml", toml_card(card))  # the check reads its baseline from the card
    card["check"]["scores"] = check_scores(f"builtin:{args.name}")
    card["benchmark"]["result"] = run_benchmark(args.name)
    io.write_text(out_dir / "card.toml", toml_card(card))
    if "recalibrate" in spec:
        recalibrate(args.name, out_dir)
    print(builtin.describe(f"builtin:{args.name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
