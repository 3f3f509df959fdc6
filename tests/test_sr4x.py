"""The 4x SR task: resampling against independent implementations, the channel rule, scores against
scikit-image, and a tiny RGB run end to end (train, infer PNG -> PNG + TIFF in the input's dtype, export, eval),
with bad input refused in one line."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf
import tifffile
from click.testing import CliRunner
from PIL import Image

from cvdm_tf import metrics
from cvdm_tf.cli.main import main
from cvdm_tf.config import default_config
from cvdm_tf.tasks.sr4x import DataConfig, SR4xTask, luma, resample, to_channels

TINY_SR = {
    "model": dict(base_filters=4, depth=2, tau_base_filters=4, tau_depth=1, time_units=4),
    "train": dict(steps=4, batch_size=2, log_every=2, checkpoint_every=2, preview_every=4),
    "sampler": dict(steps=3, samples=2),
    "data": dict(image_size=16),
}


def tiny_sr_config(**sections):
    merged = {name: {**TINY_SR.get(name, {}), **sections.get(name, {})} for name in {*TINY_SR, *sections}}
    return default_config("sr4x").replace(**merged)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    """Smooth colour images (PNG, uint8) of 48 x 40 px and one grey one of 12 x 12 (smaller than the crop)."""
    root = tmp_path_factory.mktemp("hr")
    yy, xx = np.mgrid[0:48, 0:40] / 40.0
    for i in range(3):
        rgb = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), np.sin(xx * yy * 4 + i)], axis=-1)
        iio.imwrite(root / f"c{i}.png", np.round((rgb + 1) * 127.5).astype(np.uint8))
    iio.imwrite(root / "grey.png", (np.arange(144).reshape(12, 12) + 50).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory, hr_folder):
    from cvdm_tf.training import train

    out = tmp_path_factory.mktemp("runs") / "sr4x"
    train(tiny_sr_config(data={"source": str(hr_folder)}, train={"validation_fraction": 0.25}), out)
    return out


# === Resampling ===


@pytest.mark.parametrize("kernel, pil", [("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)])
def test_downsampling_is_pils_antialiased_resize(rng, kernel, pil):
    """Antialiased 4x downsampling agrees with Pillow's (an independent implementation of the same kernels)."""
    image = rng.uniform(0, 1, (32, 48)).astype(np.float32)
    ours = resample(image[None, ..., None], 1 / 4, kernel).numpy()[0, ..., 0]
    theirs = np.asarray(Image.fromarray(image, mode="F").resize((12, 8), pil))
    assert ours.shape == (8, 12)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_resampling_keeps_a_constant_image_constant():
    task = SR4xTask(DataConfig())
    constant = tf.fill([20, 24, 3], 0.4)
    low = task.low_resolution(constant).numpy()
    assert low.shape == (5, 6, 3)
    np.testing.assert_allclose(low, np.round(0.4 * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(task.condition(low).numpy(), 2 * np.round(0.4 * 255) / 255 - 1, atol=1e-5)


def test_training_pair_units_and_grids(hr_folder):
    task = SR4xTask(DataConfig(source=str(hr_folder), image_size=16))
    train, _, described = task.training_banks(0.0, 0, 16)
    assert "4 training" in described
    crop = train.random_crop(16, tf.constant([0, 1], tf.int64))
    y, x = task.pair(crop, tf.constant([0, 0], tf.int64))
    assert y.shape == x.shape == (16, 16, 3)
    np.testing.assert_allclose(x.numpy(), 2 * crop["image"].numpy() - 1)
    offset, scale = task.units(crop["image"])
    np.testing.assert_allclose(x.numpy() * scale.numpy() + offset.numpy(), crop["image"].numpy(), atol=1e-6)


def test_channels_rule():
    grey = np.full((4, 4, 1), 0.5, np.float32)
    rgba = np.concatenate([np.zeros((4, 4, 3)), np.ones((4, 4, 1))], axis=-1)
    assert to_channels(grey, 3).shape == (4, 4, 3)
    assert to_channels(rgba, 3).shape == (4, 4, 3)
    assert to_channels(rgba, 1).shape == (4, 4, 1)


# === Scores ===


def test_scores_agree_with_scikit_image(rng):
    """PSNR / SSIM on RGB and on the BT.601 Y channel against skimage's rgb2ycbcr and metrics (with the 4 px
    border shaved, the estimate rounded to 8 bits, as the task documents)."""
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    truth = rng.uniform(0, 1, (40, 48, 3))
    estimate = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    scores = SR4xTask(DataConfig()).score(estimate, truth)
    a, b = np.round(estimate * 255)[4:-4, 4:-4], (truth * 255)[4:-4, 4:-4]
    ya, yb = rgb2ycbcr(a / 255)[..., 0], rgb2ycbcr(b / 255)[..., 0]
    np.testing.assert_allclose(luma(a / 255), ya, atol=1e-6)
    mse = np.mean((a - b) ** 2)
    assert scores["psnr_rgb"] == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-9)
    assert scores["psnr_y"] == pytest.approx(peak_signal_noise_ratio(yb, ya, data_range=255), rel=1e-9)
    ssim = structural_similarity(ya, yb, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert scores["ssim_y"] == pytest.approx(ssim, rel=1e-9)
    # and SSIM against TensorFlow's implementation (independent code, same settings)
    tf_ssim = tf.image.ssim(tf.constant(a[None]), tf.constant(b[None]), max_val=255.0).numpy()[0]
    assert scores["ssim_rgb"] == pytest.approx(float(tf_ssim), abs=1e-4)


# === End to end ===


@pytest.mark.slow
def test_train_infer_export_eval_rgb(sr_run, tmp_path):
    """16 x 16 RGB PNG in -> 64 x 64 x 3 uint8 PNG + TIFF out; a 16-bit and a float TIFF keep their range."""
    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    low = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    iio.imwrite(inputs / "small.png", low)
    tifffile.imwrite(inputs / "u16.tif", rng.integers(1000, 60000, (12, 12, 3), dtype=np.uint16), photometric="rgb")
    tifffile.imwrite(inputs / "f.tif", rng.uniform(-5, 3, (12, 12, 3)).astype(np.float32), photometric="rgb")
    out = tmp_path / "out"
    result = _invoke("infer", "--model", sr_run, "--input", inputs, "--out", out, "--samples", 2, "--steps", 2)
    assert result.exit_code == 0, result.stderr
    png = iio.imread(out / "small_mean.png")
    tif = tifffile.imread(out / "small_mean.tif")
    assert png.shape == tif.shape == (64, 64, 3) and png.dtype == tif.dtype == np.uint8
    np.testing.assert_array_equal(png, tif)
    assert tifffile.imread(out / "small_std.tif").shape == (64, 64, 3)
    assert (out / "small_preview.png").is_file() and (out / "small_schedule.tif").is_file()
    u16 = tifffile.imread(out / "u16_mean.tif")
    assert u16.dtype == np.uint16 and u16.shape == (48, 48, 3) and u16.max() > 255
    f = tifffile.imread(out / "f_mean.tif")
    assert f.dtype == np.float32 and -5 - 1e-4 <= f.min() and f.max() <= 3 + 1e-4 and f.min() < -1
    # export: a raw [0, 1] image in, the 4x grid out
    exported = tmp_path / "export"
    result = _invoke("export", "--model", sr_run, "--out", exported, "--steps", 2, "--samples", 2)
    assert result.exit_code == 0, result.stderr
    served = tf.saved_model.load(str(exported)).signatures["serving_default"](
        condition=tf.constant(low[None] / 255.0, tf.float32))
    assert served["mean"].shape == (1, 64, 64, 3)


@pytest.mark.slow
def test_eval_scores_the_model_and_bicubic(sr_run, hr_folder, tmp_path):
    report_path = tmp_path / "report.json"
    result = _invoke("eval", "--model", sr_run, "--data", hr_folder / "c0.png", "--samples", 2, "--steps", 2,
                     "--out", report_path)
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert {"cvdm", "bicubic"} <= set(report["mean"]) and report["mean"]["bicubic"]["psnr_y"] > 10
    assert "PSNR Y" in result.stdout


@pytest.mark.slow
def test_bad_input_one_line_each_exit_2_nothing_written(sr_run, tmp_path):
    """An unreadable image, a grey image for an RGB run, NaN pixels: one `error:` line each, exit 2, no output."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    iio.imwrite(bad / "grey.png", np.zeros((16, 16), np.uint8))
    image = np.ones((16, 16, 3), np.float32)
    image[3, 3, 1] = np.nan
    tifffile.imwrite(bad / "nan.tif", image, photometric="rgb")
    out = tmp_path / "out"
    result = _invoke("infer", "--model", sr_run, "--input", bad, "--out", out)
    assert result.exit_code == 2
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert len(errors) == 3
    expected = {"grey.png": "1 channel(s), the model needs 3", "nan.tif": "NaN", "unreadable.png": ""}
    for line, (name, fragment) in zip(errors, sorted(expected.items())):
        assert str(bad / name) in line and fragment in line
    assert not out.exists() or not any(out.iterdir())


def test_scores_of_a_perfect_estimate():
    truth = np.random.default_rng(0).uniform(0, 1, (32, 32, 3))
    truth = np.round(truth * 255) / 255
    scores = SR4xTask(DataConfig()).score(truth, truth)
    assert scores["psnr_rgb"] == float("inf") and scores["ssim_y"] == pytest.approx(1.0) and scores["spectral_db"] == 0
    assert metrics.psnr(truth, truth, 1.0) == float("inf")
