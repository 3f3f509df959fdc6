"""The 2x (BioSR) and 4x super-resolution tasks from the files in to the numbers out (issue 24): a point-mass model
through `reconstruct` gives a known intensity in the input file's units, and `eval`'s rows are recomputed with
scikit-image and Pillow from the files `infer` writes. Library calls only (`infer_paths`, `evaluate`): the CLI and
the config files come from the editable install, not this tree."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cvdm_tf import builtin
from cvdm_tf.evaluation import evaluate
from cvdm_tf.inference import infer_paths, reconstruct
from cvdm_tf.schedules import make_schedule
from test_sampler import ExactGaussianModel, ResidualGaussianModel


def point_mass_model(mu, channels):
    """The exact denoiser of x = mu (per channel), whatever the condition: every sample is mu in the model's
    normalised units, at every step (s = 0); `channels` condition and target channels."""
    exact = ExactGaussianModel(np.asarray(mu, np.float32), 0.0, condition_channels=channels)
    exact.model_config = dataclasses.replace(exact.model_config, target_channels=channels)
    exact.schedule = make_schedule(exact.model_config)
    return exact


def _min_max(values):
    """Each image scaled to [0, 1] by its own minimum and maximum (BioSR's scoring: percentiles 0 and 100)."""
    values = np.asarray(values, np.float64)
    return (values - values.min()) / (values.max() - values.min())


def _ssim(a, b, data_range, **options):
    """SSIM with Wang et al.'s settings, as the task documents them (gaussian window, sigma 1.5, population
    covariances)."""
    return structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, **options)


# === Units: a point mass comes back in the input's units ===


def test_biosr_point_mass_comes_back_in_the_widefield_units(tmp_path):
    """BioSR's target x in [-1, 1] maps to the widefield's units through its percentiles (0 and 100: min, max):
    value = (x + 1) / 2 (max - min) + min. A uint16 widefield file of 40..3000 counts and a model whose samples are
    x = 0.5: every pixel of NAME_mean.tif is 0.75 (max - min) + min = 2260 counts, on the 2x grid, with std 0."""
    from cvdm_tf.tasks.biosr import BioSRTask, DataConfig

    rng = np.random.default_rng(0)
    counts = rng.integers(40, 3001, (12, 10)).astype(np.uint16)
    counts[0, 0], counts[-1, -1] = 40, 3000
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, counts)
    task = BioSRTask(DataConfig())
    [raw] = task.read_measurements(path)
    result = reconstruct(point_mass_model(0.5, 1), task, raw, samples=2, steps=5, method="ddpm")
    task.write_outputs(tmp_path / "out", "wide", raw, result, source=path)
    mean = tifffile.imread(tmp_path / "out" / "wide_mean.tif")
    assert mean.shape == (24, 20)
    np.testing.assert_allclose(mean, 0.75 * (3000 - 40) + 40, rtol=1e-5)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "wide_std.tif"), 0.0, atol=1e-3)


@pytest.mark.parametrize("stated, expected", [(None, 0.0313), (0.0626, 0.0313), (0.064, 0.032), (0.1, None)])
def test_biosr_outputs_state_half_the_widefield_pixel_size_in_ome(tmp_path, stated, expected):
    """NAME_mean.tif's OME PhysicalSizeX (read by tifffile's OME parser) is half the input's stated widefield
    pixel size; without one, the model's SIM grid; one 5% or more off the model's is refused, naming the file."""
    from cvdm_tf.errors import InputError
    from cvdm_tf.tasks.biosr import BioSRTask, DataConfig

    counts = np.random.default_rng(1).integers(40, 3001, (12, 10)).astype(np.uint16)
    path = tmp_path / "wide.tif"
    metadata = {} if stated is None else {"metadata": {"axes": "YX", "PhysicalSizeX": stated, "PhysicalSizeY": stated,
                                                       "PhysicalSizeXUnit": "\u00b5m"}, "ome": True}
    tifffile.imwrite(path, counts, **metadata)
    task = BioSRTask(DataConfig())
    if expected is None:
        with pytest.raises(InputError, match=r"wide.tif: widefield pixel size 0.1 um .* trained on 0.0626 um"):
            task.read_file(path)
        return
    file_task, [raw] = task.read_file(path)
    result = reconstruct(point_mass_model(0.5, 1), file_task, raw, samples=2, steps=2, method="ddpm")
    file_task.write_outputs(tmp_path / "out", "wide", raw, result, source=path, made_by="a test")
    with tifffile.TiffFile(tmp_path / "out" / "wide_mean.tif") as tif:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    assert image["Pixels"]["PhysicalSizeX"] == pytest.approx(expected)
    assert image["Pixels"]["PhysicalSizeXUnit"] == "\u00b5m"
    assert image["Description"] == "a test"


def test_biosr_zero_residual_around_the_condition_is_the_bicubic_widefield_in_its_units():
    """BioSR diffuses the residual around its condition (the normalised widefield, upsampled): a model whose
    residual is 0 returns the widefield itself on the 2x grid, in its own units. Against Pillow's bicubic 2x
    resize of the raw image (an independent implementation of the same Keys kernel, half-pixel centres): measured
    max difference 3e-7 of the range, borders included (bound 1e-5). Corner-aligned centres would be 6% off, a
    cubic spline 2%."""
    from cvdm_tf.tasks.biosr import BioSRTask, DataConfig
    from skimage.filters import gaussian

    raw = (50 + 900 * gaussian(np.random.default_rng(1).uniform(size=(20, 16)), 1)).astype(np.float32)
    model = ResidualGaussianModel(0.0, 0.0, residual_scale=1.0, target_range=0.0)  # no clip: bicubic overshoots
    result = reconstruct(model, BioSRTask(DataConfig()), raw[..., None], samples=1, steps=3, method="ddim")
    pillow = np.asarray(Image.fromarray(raw, mode="F").resize((32, 40), Image.BICUBIC))
    assert result["mean"].shape == (40, 32, 1)
    assert np.abs(result["mean"][..., 0] - pillow).max() < 1e-5 * np.ptp(raw)


@pytest.mark.parametrize("kind", ["uint8 png", "uint16 tiff", "float tiff"])
def test_sr4x_point_mass_comes_back_in_the_input_files_units(tmp_path, kind):
    """4x SR: x in [-1, 1] is (value in [0, 1]) * 2 - 1, and `infer` writes the mean in the input file's range and
    dtype family. Samples x = (0.5, -0.2, 0.9) per channel are 0.75, 0.4, 0.95 of the range: in a uint8 PNG
    191, 102, 242; in a uint16 TIFF 49151, 26214, 62258; in a float TIFF of values -3..5, 3, 0.2, 4.6."""
    from cvdm_tf.tasks.sr4x import DataConfig, SR4xTask

    rng = np.random.default_rng(2)
    fractions = np.array([0.75, 0.4, 0.95])
    if kind == "uint8 png":
        path, pixels = tmp_path / "low.png", rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        expected, dtype = np.round(fractions * 255), np.uint8
    elif kind == "uint16 tiff":
        path, pixels = tmp_path / "low.tif", rng.integers(0, 65536, (8, 6, 3), dtype=np.uint16)
        tifffile.imwrite(path, pixels, photometric="rgb")
        expected, dtype = np.round(fractions * 65535), np.uint16
    else:
        path, pixels = tmp_path / "low.tif", rng.uniform(-3, 5, (8, 6, 3)).astype(np.float32)
        pixels[0, 0, 0], pixels[-1, -1, -1] = -3, 5
        tifffile.imwrite(path, pixels, photometric="rgb")
        expected, dtype = -3 + 8 * fractions, np.float32
    task = SR4xTask(DataConfig())
    [raw] = task.read_measurements(path)
    result = reconstruct(point_mass_model([0.5, -0.2, 0.9], 3), task, raw, samples=2, steps=5, method="ddim")
    task.write_outputs(tmp_path / "out", "low", raw, result, source=path)
    mean = tifffile.imread(tmp_path / "out" / "low_mean.tif")
    assert mean.shape == (32, 24, 3) and mean.dtype == dtype
    np.testing.assert_allclose(mean, np.broadcast_to(expected, mean.shape), rtol=1e-5)
    png = np.asarray(Image.open(tmp_path / "out" / "low_mean.png"))
    np.testing.assert_array_equal(png, np.broadcast_to(np.round(fractions * 255), png.shape))


# === eval's rows from infer's files ===


def test_biosr_eval_rows_are_the_scores_of_the_files_infer_writes(tmp_path):
    """`evaluate` and `infer_paths` with the built-in BioSR model on its held-out set (4 cells, 32 px widefield),
    same sampler and seed: every image's cvdm MAE, PSNR and SSIM (its point estimate's, the card's: the mean
    network's) recomputed from the NAME_mean_network.tif infer writes unasked and gt/NAME.tif
    (each scaled to [0, 1] by its min and max, then scikit-image) agree within 1e-5 (measured 2e-7), and so do
    the mean rows. The Richardson-Lucy row (5 iterations) against scikit-image's RL with the closed-form Airy PSF
    on the spline-upsampled widefield file (test_optics): within 1% (measured 0.33%: the PSFs differ by 0.65%)."""
    from skimage.restoration import richardson_lucy
    from skimage.transform import resize

    from cvdm_tf.runs import load_run
    from test_optics import airy_kernel

    config, task, model = load_run("builtin:biosr")
    data = builtin.heldout("builtin:biosr")
    report = evaluate(config, task, model, data, samples=2, steps=3, seed=0, baselines=["richardson-lucy"],
                      baseline_options={"richardson-lucy": {"iterations": 5}})
    infer_paths("builtin:biosr", data / "wf", tmp_path, samples=2, steps=3, seed=0)
    d = config.data
    half = int(np.ceil(3 * 0.6098 * d.wavelength_um / d.na / d.pixel_size_um))
    airy = airy_kernel(2 * half + 1, d.pixel_size_um, d.na, d.wavelength_um)
    assert len(report["images"]) == 4 and config.sampler.estimate == report["estimate"] == "mean_network"
    recomputed = []
    for row in report["images"]:
        truth = _min_max(tifffile.imread(data / "gt" / f"{row['name']}.tif"))
        estimate = _min_max(tifffile.imread(tmp_path / f"{row['name']}_{config.sampler.estimate}.tif"))
        scores = {"mae": np.mean(np.abs(estimate - truth)),
                  "psnr": peak_signal_noise_ratio(truth, estimate, data_range=1.0),
                  "ssim": _ssim(estimate, truth, 1.0)}
        recomputed.append(scores)
        for key, value in scores.items():
            assert row["cvdm"][key] == pytest.approx(value, rel=1e-5), (row["name"], key)
        widefield = tifffile.imread(data / "wf" / f"{row['name']}.tif").astype(np.float64)
        upsampled = resize(widefield, (2 * widefield.shape[0], 2 * widefield.shape[1]), order=3, mode="reflect",
                           anti_aliasing=False).clip(0)
        restored = _min_max(richardson_lucy(upsampled / upsampled.max(), airy, num_iter=5, clip=False))
        assert row["richardson-lucy"]["mae"] == pytest.approx(np.mean(np.abs(restored - truth)), rel=0.01)
        assert row["richardson-lucy"]["ssim"] == pytest.approx(_ssim(restored, truth, 1.0), rel=0.01)
    for key in ("mae", "psnr", "ssim"):
        assert report["mean"]["cvdm"][key] == pytest.approx(np.mean([s[key] for s in recomputed]), rel=1e-5)


def test_sr4x_eval_rows_are_the_scores_of_the_files_infer_writes(tmp_path):
    """`evaluate` and `infer_paths` with the built-in 4x SR model on lr/ + hr/ PNG pairs (64 px crops of its
    held-out images, the LR made by Pillow's bicubic resize), same sampler and seed: every image's PSNR and SSIM,
    on RGB and on the BT.601 luma (scikit-image's rgb2ycbcr), recomputed from hr/NAME.png and the model's point
    estimate as infer writes it unasked (its card's `sampler.estimate`: NAME_mean_network.png) read by Pillow, 4 px
    border shaved, agree within 1e-6 (measured: equal to 6 digits)."""
    from skimage.color import rgb2ycbcr

    from cvdm_tf.runs import load_run

    pairs = tmp_path / "pairs"
    for folder in ("lr", "hr"):
        (pairs / folder).mkdir(parents=True)
    for source in sorted(builtin.heldout("builtin:sr4x").glob("*.tif"))[:3]:
        high = Image.fromarray(np.round(tifffile.imread(source)[32:96, 32:96]).astype(np.uint8))
        high.save(pairs / "hr" / f"{source.stem}.png")
        high.resize((16, 16), Image.BICUBIC).save(pairs / "lr" / f"{source.stem}.png")
    config, task, model = load_run("builtin:sr4x")
    report = evaluate(config, task, model, pairs, samples=2, steps=3, seed=0)
    infer_paths("builtin:sr4x", pairs / "lr", tmp_path / "out", samples=2, steps=3, seed=0, median=True)
    assert len(report["images"]) == 3 and config.sampler.estimate == report["estimate"] == "mean_network"
    for row in report["images"]:
        estimate = np.asarray(Image.open(tmp_path / "out" / f"{row['name']}_mean_network.png"), np.float64)[4:-4, 4:-4]
        mean = np.asarray(Image.open(tmp_path / "out" / f"{row['name']}_mean.png"), np.float64)[4:-4, 4:-4]
        truth = np.asarray(Image.open(pairs / "hr" / f"{row['name']}.png"), np.float64)[4:-4, 4:-4]
        luma_estimate, luma_truth = (rgb2ycbcr(v / 255.0)[..., 0] for v in (estimate, truth))
        scores = {"psnr_rgb": peak_signal_noise_ratio(truth, estimate, data_range=255),
                  "ssim_rgb": _ssim(estimate, truth, 255, channel_axis=-1),
                  "psnr_y": peak_signal_noise_ratio(luma_truth, luma_estimate, data_range=255),
                  "ssim_y": _ssim(luma_estimate, luma_truth, 255)}
        for key, value in scores.items():
            assert row["cvdm"][key] == pytest.approx(value, rel=1e-6), (row["name"], key)
        # `--median`: written like the mean, 8 bits in, 8 bits out (of two samples, the median is their mean).
        median = np.asarray(Image.open(tmp_path / "out" / f"{row['name']}_median.png"), np.float64)[4:-4, 4:-4]
        assert np.abs(median - mean).max() <= 1
        assert tifffile.imread(tmp_path / "out" / f"{row['name']}_median.tif").dtype == np.uint8
        # The mean network's E[x|y] on the whole condition, no samples, in 8 bits as the mean.
        _, [low] = task.read_file(pairs / "lr" / f"{row['name']}.png")  # as infer reads it: in [0, 1]
        y = task.condition(tf.constant(low))[None]
        offset, scale = (np.asarray(v) for v in task.units(tf.constant(low)))
        expected = np.round(np.clip(model.prior_mean(y).numpy()[0] * scale + offset, 0, 1) * 255)[4:-4, 4:-4]
        assert np.abs(estimate - expected).max() <= 1
