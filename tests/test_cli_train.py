"""`cvdm-tf train` with bad input: one line `error: ...` naming the file or key, exit code 2, no traceback, and
nothing left in --out. (Training itself, resume and signals: tests/test_runs.py.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cvdm_tf.cli.main import main

TINY = """
task = "qpi"
[model]
base_filters = 4
depth = 2
tau_base_filters = 4
tau_depth = 1
time_units = 4
[train]
steps = 2
batch_size = 2
[data]
image_size = 16
"""


def _train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def _assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    # Errors found once the data loads come after the line that says training starts (the options and the config
    # were good); nothing else.
    if len(lines) == 2 and lines[0].startswith(("starting ", "resuming ")) and "training in" in lines[0]:
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _write_npy(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(image, np.float32))
    return path


# === Data ===


def test_a_data_folder_without_images(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    out = tmp_path / "run"
    result = _train("--config", tiny, "--data", tmp_path / "empty", "--out", out)
    _assert_user_error(result, str(tmp_path / "empty"), "no images found")
    # The options and config were good: a line said so before the data loaded (the first line of a run).
    assert result.output.startswith(f"starting qpi training in {out}: loading the data")
    assert not out.exists()


def test_a_missing_data_folder(tmp_path, tiny):
    out = tmp_path / "run"
    _assert_user_error(_train("--config", tiny, "--data", tmp_path / "nowhere", "--out", out),
                       str(tmp_path / "nowhere"), "no such file or folder")
    assert not out.exists()


def test_images_smaller_than_the_crop(tmp_path, tiny):
    _write_npy(tmp_path / "small" / "a.npy", np.random.default_rng(0).random((12, 40)))
    out = tmp_path / "run"
    line = _assert_user_error(_train("--config", tiny, "--data", tmp_path / "small", "--out", out),
                              "no image is at least 16 x 16 pixels", "a 12 x 40")
    assert "--image-size" in line
    assert not out.exists()


def test_an_image_with_nan_pixels(tmp_path, tiny):
    image = np.random.default_rng(0).random((32, 32))
    image[3, 4] = np.nan
    _write_npy(tmp_path / "data" / "bad.npy", image)
    out = tmp_path / "run"
    _assert_user_error(_train("--config", tiny, "--data", tmp_path / "data", "--out", out),
                       "bad.npy", "NaN or Inf")
    assert not out.exists()


# === Task, config, options ===


def test_an_unknown_task(tmp_path):
    out = tmp_path / "run"
    _assert_user_error(_train("--task", "foo", "--out", out), "--task", "'foo'", "known: qpi")
    assert not out.exists()


@pytest.mark.parametrize("text, fragments", [
    (TINY + "\nlearning_rte = 0.1\n", ["unknown key 'data.learning_rte'"]),
    (TINY.replace("[train]\n", "[train]\nwarmup = 3\n"), ["unknown key 'train.warmup'"]),
    (TINY.replace("steps = 2", 'steps = "2"'), ["key 'train.steps' must be int", "str '2'"]),
    (TINY.replace("steps = 2", "steps = true"), ["key 'train.steps' must be int", "bool"]),
    (TINY.replace("image_size = 16", "image_size = 16.5"), ["key 'data.image_size' must be int"]),
    (TINY.replace("depth = 2", 'depth = 2\nschedule = "quadratic"'), ["model.schedule", "'quadratic'"]),
    (TINY.replace("steps = 2", "steps = 0"), ["train.steps: must be > 0"]),
    (TINY.replace("image_size = 16", "image_size = 18"), ["data.image_size: 18 is not a multiple of 4"]),
    ("task = qpi\n", ["not valid TOML"]),
    ("[model\n", ["not valid TOML"]),
])
def test_a_bad_config_file(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "run"
    _assert_user_error(_train("--config", path, "--out", out), str(path), *fragments)
    assert not out.exists()


def test_a_missing_config_file(tmp_path):
    out = tmp_path / "run"
    _assert_user_error(_train("--config", tmp_path / "none.toml", "--out", out), "none.toml", "not found")
    assert not out.exists()


@pytest.mark.parametrize("args, fragments", [
    (["--steps", "0"], ["option: train.steps: must be > 0"]),
    (["--image-size", "22"], ["option: data.image_size: 22 is not a multiple of 4", "use e.g. 20 or 24"]),
    (["--batch-size", "-1"], ["option: train.batch_size"]),
])
def test_a_bad_option(tmp_path, tiny, args, fragments):
    out = tmp_path / "run"
    _assert_user_error(_train("--config", tiny, "--out", out, *args), *fragments)
    assert not out.exists()


# === Run folders ===


def test_an_existing_non_empty_out_without_resume(tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    _assert_user_error(_train("--config", tiny, "--out", out), str(out), "not empty", "--resume")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"


def test_resume_with_no_run_there(tmp_path):
    _assert_user_error(_train("--resume", "--out", tmp_path / "nowhere"), "nowhere", "no such run folder")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    _assert_user_error(_train("--resume", "--out", tmp_path / "empty"), "no config.toml", "nothing to resume")
    assert list((tmp_path / "empty").iterdir()) == []
    _assert_user_error(_train("--resume"), "--resume needs --out")


def test_resume_cannot_change_the_run(tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text(TINY)
    _assert_user_error(_train("--resume", "--out", out, "--config", tiny, "--image-size", "32"),
                       "--config, --image-size", "keeps its own config.toml")
    assert [p.name for p in out.iterdir()] == ["config.toml"]


def test_a_checkpoint_index_naming_missing_files(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.toml").write_text(TINY)
    (out / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-8"\n')
    _assert_user_error(_train("--resume", "--out", out), "names ckpt-8", "files are missing")
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoint", "checkpoints", "config.toml"]


# === A real process ===


def test_bad_input_in_a_real_process_is_one_line_and_exit_code_2(tmp_path):
    """The same as above without click's test runner: the process's whole stderr is the one line."""
    config = tmp_path / "bad.toml"
    config.write_text("this is not toml")
    out = tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "cvdm_tf.cli.main", "train", "--config", str(config), "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {config}: not valid TOML (")
    assert proc.stderr.count("\n") == 1
    assert not out.exists()


def test_a_typo_in_a_path_is_answered_before_tensorflow_loads(tmp_path):
    """`infer` with a missing input or no run folder: one line, exit code 2, and TensorFlow never imported (its
    import is what takes seconds)."""
    code = ("import sys\nfrom cvdm_tf.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as end:\n    print(end.code, 'tensorflow' in sys.modules)")
    for args in (["--model", "builtin:qpi", "--input", str(tmp_path / "missing.tif")],
                 ["--model", str(tmp_path / "no-run"), "--input", str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-c", code, "infer", *args, "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=300)
        assert proc.stdout.split() == ["2", "False"], proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
        assert not (tmp_path / "out").exists()


def test_tensorflow_starts_quietly_when_a_command_first_needs_it_and_speaks_with_verbose(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "img.png", (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8))
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    stderr = {}
    for flag in ("", "--verbose"):
        proc = subprocess.run([sys.executable, "-m", "cvdm_tf.cli.main", "simulate", "--input",
                               str(tmp_path / "img.png"), "--out", str(tmp_path / f"sim{flag}"), *filter(None, [flag])],
                              capture_output=True, text=True, env={**env, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("wrote 1 simulated measurement(s)")
        stderr[flag] = proc.stderr
    assert stderr[""] == ""
    assert stderr["--verbose"] != ""  # TensorFlow's own start-up lines (oneDNN, CUDA probes)
