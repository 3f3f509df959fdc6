"""The SavedModel export: reloaded without this package, both signatures, same numbers as the in-process sampler."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cvdm_tf.cli.main import main
from cvdm_tf.config import load_config

pytestmark = pytest.mark.slow

STEPS, SAMPLES = 3, 2
SHAPES = ((16, 16), (24, 20))

# Run in a fresh interpreter (-I, cwd outside the repo) that refuses to import cvdm_tf at all: the editable
# install's import hook would otherwise find it, so a blocker goes first on sys.meta_path.
SERVE_SCRIPT = r"""
import json, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cvdm_tf":
            raise ImportError(f"the export must not need {name}")

sys.meta_path.insert(0, Blocker())

import numpy as np
import tensorflow as tf

export_dir, shapes, out_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
loaded = tf.saved_model.load(export_dir)
physics = dict(wavelength_um=tf.constant(0.521), pixel_size_um=tf.constant(0.21), defocus_um=tf.constant(1.0))
results = {}
for h, w in shapes:
    condition = tf.constant(np.random.default_rng(h * w).uniform(0.5, 1.5, (2, h, w, 2)).astype("float32"))
    for name, value in loaded.signatures["serving_default"](condition=condition, **physics).items():
        results[f"serve_{h}x{w}_{name}"] = value.numpy()
h, w = shapes[-1]
out = loaded.signatures["sample"](condition=condition, steps=tf.constant(2), samples=tf.constant(3),
                                  seed=tf.constant(1), **physics)
for name, value in out.items():
    results[f"sample_{name}"] = value.numpy()
np.savez(out_file, **results)
print(json.dumps({"cvdm_modules": sorted(m for m in sys.modules if m.split(".")[0] == "cvdm_tf")}))
"""


def _condition(h, w):
    return np.random.default_rng(h * w).uniform(0.5, 1.5, (2, h, w, 2)).astype("float32")


@pytest.fixture(scope="module")
def cli_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_export") / "cvdm" / "1"
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_run), "--out", str(out),
                                       "--steps", str(STEPS), "--samples", str(SAMPLES)])
    assert result.exit_code == 0, result.output
    assert "serving_default" in result.output
    return out


@pytest.fixture(scope="module")
def library_export(tiny_run, tmp_path_factory):
    from cvdm_tf.export import export_run

    out = tmp_path_factory.mktemp("lib_export") / "model"
    assert export_run(tiny_run, out, steps=STEPS, samples=SAMPLES) == out
    return out


def test_export_is_a_complete_saved_model(cli_export, tiny_run):
    assert (cli_export / "saved_model.pb").is_file()
    assert (cli_export / "variables" / "variables.index").is_file()
    # The resolved config travels with the export; the temporary sibling folder is gone.
    assert load_config(cli_export / "assets" / "cvdm_config.toml") == load_config(tiny_run / "config.toml")
    assert [p.name for p in cli_export.parent.iterdir()] == [cli_export.name]


def test_export_runs_without_this_package(cli_export, tmp_path):
    shapes = [list(s) for s in SHAPES]
    result = subprocess.run(
        [sys.executable, "-I", "-c", SERVE_SCRIPT, str(cli_export), json.dumps(shapes), str(tmp_path / "out.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"cvdm_modules": []}
    out = np.load(tmp_path / "out.npz")
    for h, w in SHAPES:
        for name in ("mean", "std", "schedule"):
            value = out[f"serve_{h}x{w}_{name}"]
            assert value.shape == (2, h, w, 1) and value.dtype == np.float32, name
            assert np.isfinite(value).all(), name
        assert (out[f"serve_{h}x{w}_std"] >= 0).all()
        assert out[f"serve_{h}x{w}_std"].max() > 0  # K = 2 samples from a noisy sampler differ
    h, w = SHAPES[-1]
    assert out["sample_samples"].shape == (2, 3, h, w, 1)
    assert out["sample_mean"].shape == (2, h, w, 1)
    assert np.isfinite(out["sample_samples"]).all()


def test_saved_model_cli_describes_both_signatures(cli_export):
    tool = Path(sys.executable).with_name("saved_model_cli")
    tool = str(tool) if tool.is_file() else shutil.which("saved_model_cli")
    assert tool, "saved_model_cli (installed with tensorflow) not found"
    result = subprocess.run([tool, "show", "--all", "--dir", str(cli_export)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    sections = {part.split("'")[0]: part for part in result.stdout.split("signature_def['")[1:]}

    def names(section, kind):
        return {line.split("'")[1] for line in section.splitlines() if line.strip().startswith(f"{kind}['")}

    serve, sample = sections["serving_default"], sections["sample"]
    physics = {"wavelength_um", "pixel_size_um", "defocus_um"}  # the measurement's, QPI's physics_keys
    assert names(serve, "inputs") == {"condition", *physics}
    assert names(serve, "outputs") == {"mean", "std", "schedule", "estimate"}
    assert names(sample, "inputs") == {"condition", "steps", "samples", "seed", *physics}
    assert names(sample, "outputs") == {"mean", "std", "schedule", "estimate", "samples"}
    assert "shape: (-1, -1, -1, 2)" in serve and "DT_FLOAT" in serve  # any batch, H, W; the intensity pair
    assert "shape: (-1, -1, -1, 1)" in serve  # mean/std/schedule: one phase channel


def test_seeded_export_matches_the_in_process_sampler(library_export, tiny_run):
    """The noise is stateless, seeded by (seed, step), and the graph is the same: equal up to float round-off,
    the task's refinement of the samples included (the default QPI config's data consistency), for the
    measurement's physics given as inputs (not the run's default microscope); physics outside the training range
    fails with the range named."""
    import tensorflow as tf

    from cvdm_tf.runs import load_run
    from cvdm_tf.sampler import sampler_for

    config, task, model = load_run(tiny_run)
    microscope = dict(wavelength_um=0.6, pixel_size_um=0.16, defocus_um=2.0)
    task = task.with_physics(**microscope)
    physics = {key: tf.constant(value) for key, value in microscope.items()}
    sampler = sampler_for(model, config.sampler)  # the run's discretisation and grid, as the export has them
    loaded = tf.saved_model.load(str(library_export))
    condition = _condition(*SHAPES[-1])
    y = task.normalize_condition(tf.constant(condition))
    cases = [
        (loaded.signatures["serving_default"](condition=tf.constant(condition), **physics), STEPS, SAMPLES, 0),
        (loaded.signatures["sample"](condition=tf.constant(condition), steps=tf.constant(4),
                                     samples=tf.constant(3), seed=tf.constant(7), **physics), 4, 3, 7),
    ]
    for got, steps, samples, seed in cases:
        ref = sampler(y, steps=steps, samples=samples, seed=seed, method=config.sampler.method)
        assert task.refines
        drawn = task.refine(task.denormalize_target(ref["samples"]), tf.constant(condition)).numpy()
        expected = {"mean": drawn.mean(axis=1), "std": drawn.std(axis=1, ddof=1), "schedule": ref["schedule"],
                    "estimate": drawn.mean(axis=1)}  # the tiny run's point estimate is the mean
        for name, value in expected.items():
            np.testing.assert_allclose(got[name].numpy(), np.asarray(value), atol=1e-5, err_msg=name)
    # A different seed gives different samples (the seed is an input, not baked in).
    other = loaded.signatures["sample"](condition=tf.constant(condition), steps=tf.constant(STEPS),
                                        samples=tf.constant(SAMPLES), seed=tf.constant(1), **physics)
    assert not np.allclose(other["mean"].numpy(), cases[0][0]["mean"].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside the range the model was trained on.*4-64"):
        loaded.signatures["serving_default"](condition=tf.constant(condition),
                                             **{**physics, "defocus_um": tf.constant(40.0)})


@pytest.mark.parametrize("k", [3, 4])
def test_the_exported_median_is_numpys_median_of_the_exported_samples(tiny_run, k):
    """A run whose point estimate is the median serves the per-pixel median of its (refined) samples, odd and even
    K, as numpy.median computes it; a model without a mean network cannot export the mean network's estimate."""
    import tensorflow as tf

    from cvdm_tf.export import ExportedSampler
    from cvdm_tf.runs import load_run

    config, task, model = load_run(tiny_run)
    module = ExportedSampler(model, task, steps=2, samples=k, seed=3, sampler_config=config.sampler,
                             physics_inputs=False, estimate="median")
    out = module.sample(tf.constant(_condition(*SHAPES[0])), tf.constant(2), tf.constant(k), tf.constant(3))
    drawn = out["samples"].numpy()
    np.testing.assert_allclose(out["estimate"].numpy(), np.median(drawn, axis=1), atol=1e-6)
    assert np.abs(out["estimate"].numpy() - out["mean"].numpy()).max() > 1e-4  # not the mean
    with pytest.raises(ValueError, match="no mean network"):
        ExportedSampler(model, task, steps=2, samples=k, estimate="mean_network")


def test_the_export_serves_the_recalibrated_std_where_the_run_has_a_fit_for_its_setting(tiny_run, tmp_path):
    """`cvdm-tf calibrate`'s factors travel into serving_default: std times the factor of each pixel's level,
    as `Recalibration.apply` computes it in numpy (float64 levels: a pixel on a bin's edge may differ)."""
    import shutil

    import tensorflow as tf

    from cvdm_tf import recalibration
    from cvdm_tf.export import export_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    fit = recalibration.Recalibration(tuple(np.linspace(0.5, 3.0, 10)), SAMPLES, STEPS, "ddpm", False, 1, "test")
    recalibration.save(fit, run)
    loaded = tf.saved_model.load(str(export_run(run, tmp_path / "export", steps=STEPS, samples=SAMPLES)))
    physics = {key: tf.constant(value) for key, value in dict(wavelength_um=0.6, pixel_size_um=0.16,
                                                               defocus_um=2.0).items()}
    out = loaded.signatures["serving_default"](condition=tf.constant(_condition(*SHAPES[0])), **physics)
    mean, std = out["mean"].numpy(), out["std"].numpy()
    expected = np.stack([fit.apply(s, m) for s, m in zip(std, mean)])
    close = np.isclose(out["std_recalibrated"].numpy(), expected, rtol=1e-5)
    assert close.mean() > 0.995
    assert not np.allclose(expected, std)  # the factors differ from 1
    other = tf.saved_model.load(str(export_run(run, tmp_path / "other", steps=STEPS + 1, samples=SAMPLES)))
    assert "std_recalibrated" not in other.signatures["serving_default"].structured_outputs  # no fit at this T


def test_export_of_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path):
    (tmp_path / "not_a_run").mkdir()
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "not_a_run"),
                                       "--out", str(tmp_path / "model")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not_a_run" in lines[0]
    assert not (tmp_path / "model").exists()


def test_export_refuses_a_non_empty_out(tiny_run, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", "--model", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "not empty" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in out.iterdir()] == ["keep.txt"]
