"""`cvdm-tf infer` and cvdm_tf.inference: the tiling helper against exact answers, `reconstruct` against a model
with a known output, and the command end to end on the tiny trained run (tests/conftest.py `tiny_run`)."""

import dataclasses
import shutil

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cvdm_tf.cli.main import main
from cvdm_tf import io
from cvdm_tf.tasks.qpi import DataConfig
from cvdm_tf.data import sources
from cvdm_tf.data.phantoms import cell_phantoms
from cvdm_tf.tasks.qpi import QPITask
from cvdm_tf.errors import InputError
from cvdm_tf.inference import reconstruct
from cvdm_tf.previews import preview_image
from cvdm_tf.tiling import blend_window, tile_starts, tiled_apply
from test_sampler import ExactGaussianModel

# === Tiling ===


@pytest.mark.parametrize("size, tile, overlap", [(80, 32, 8), (72, 32, 8), (33, 32, 8), (32, 32, 8), (20, 32, 8),
                                                 (2048, 256, 64)])
def test_tiles_cover_the_image_with_at_least_the_overlap(size, tile, overlap):
    starts = tile_starts(size, min(tile, size), overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blend_windows_of_neighbours_sum_to_one_in_their_overlap():
    tile, overlap = 32, 8
    left, right = blend_window(tile, overlap, False, True), blend_window(tile, overlap, True, False)
    np.testing.assert_allclose(left[tile - overlap:] + right[:overlap], 1.0, atol=1e-12)
    assert left.min() > 0 and right.min() > 0 and left[0] == 1.0 and right[-1] == 1.0


@pytest.mark.parametrize("align", [(), ("",)])
@pytest.mark.parametrize("shape, tile", [((80, 72, 3), 32), ((45, 100, 1), 16), ((20, 24, 2), 32)])
def test_identity_function_gives_the_image_back(shape, tile, align, rng):
    image = rng.normal(size=shape).astype(np.float32)
    calls = []

    def identity(batch):
        calls.append(batch.shape)
        return batch

    out = tiled_apply(identity, image, tile, batch_size=3, align=align)
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert len({s[1:] for s in calls}) == 1  # every tile has the same shape (one trace of a compiled function)


def _tile_means(batch):
    """One constant per tile that depends on where the tile is (the tile's mean of a ramp image)."""
    return np.broadcast_to(batch.mean(axis=(1, 2), keepdims=True), batch.shape).copy()


def test_tile_constants_blend_smoothly_without_seams():
    y, x = np.mgrid[0:80, 0:72].astype(np.float32)
    image = (3 * y + x)[..., None]
    out = tiled_apply(_tile_means, image, 32, batch_size=4)[..., 0]
    # Tiles start at rows 0, 24, 48 and columns 0, 24, 40: their constants (tile means of the ramp) step by
    # 3 * 24 = 72 from row to row and by 24 (then 16) from column to column.
    rows, cols = tile_starts(80, 32, 8), tile_starts(72, 32, 8)
    assert rows == [0, 24, 48] and cols == [0, 24, 40]
    constants = [3 * (r + 15.5) + (c + 15.5) for r in rows for c in cols]
    assert min(constants) - 1e-3 <= out.min() and out.max() <= max(constants) + 1e-3
    # Hard stitching would jump by those steps at a seam; the raised-cosine blend spreads them over the 8 px ramp
    # (steepest slope pi / 16 ~ 0.2 of the step).
    assert np.abs(np.diff(out, axis=0)).max() < 0.25 * 72
    assert np.abs(np.diff(out, axis=1)).max() < 0.25 * 24


def test_aligned_tiles_recover_an_offset_free_field(rng):
    """Each tile knows the field only up to its own constant (like QPI's phase): alignment puts them back."""
    y, x = np.mgrid[0:80, 0:72].astype(np.float64)
    field = (np.sin(y / 9) + 0.02 * x + 0.01 * (y - 40) ** 2 / 40)[..., None].astype(np.float32)

    def offset_free(batch):
        return batch - batch.mean(axis=(1, 2), keepdims=True)

    aligned = tiled_apply(offset_free, field, 32, batch_size=5, align=("",))
    assert np.ptp(aligned - field) < 1e-4  # the field itself, up to one constant
    naive = tiled_apply(offset_free, field, 32, batch_size=5)
    assert np.ptp(naive - field) > 0.1
    # Constants per tile are pure offsets: aligned, they become one constant.
    ramp = np.mgrid[0:80, 0:72][0].astype(np.float32)[..., None]
    assert np.ptp(tiled_apply(_tile_means, ramp, 32, align=("",))) < 1e-3


# === reconstruct with a model whose answer is known ===


def PointMassModel(mu=0.5, s=1e-3):
    """x = mu exactly, whatever the condition: the exact denoiser of a (nearly) point-mass target, for a 2-channel
    QPI condition and a size multiple of 4 (test_sampler's ExactGaussianModel)."""
    return ExactGaussianModel(mu, s, condition_channels=2, depth=2)


@pytest.fixture(scope="module")
def qpi_task():
    return QPITask(DataConfig(noise="none"))


def _measurement(task, shape, seed=0):
    from skimage.filters import gaussian

    phase = gaussian(np.random.default_rng(seed).uniform(size=shape), sigma=2) * 3.0
    return task.measure(tf.constant(phase, tf.float32)).numpy()


@pytest.mark.parametrize("shape, tile", [((80, 72), 32), ((3, 2), 256), ((40, 6), 16)])
def test_reconstruct_tiled_constant_model_gives_a_constant_map(qpi_task, shape, tile):
    raw = _measurement(qpi_task, shape)
    out = reconstruct(PointMassModel(), qpi_task, raw, samples=2, steps=20, method="ddim", seed=3, tile=tile,
                      batch_size=4)
    expected = float(qpi_task.denormalize_target(np.float32(0.5)))
    for key in ("mean", "std", "schedule"):
        assert out[key].shape == (*shape, 1) and out[key].dtype == np.float32
    np.testing.assert_allclose(out["mean"], expected, atol=0.02)
    assert np.all(out["std"] >= 0) and out["std"].max() < 0.02


class NothingLearned(ExactGaussianModel):
    """The default QPI model (residual around the TIE channel: mean = condition, residual_scale 2, x_range 4, the
    learned schedule) with the exact denoiser of a residual that is always 0: a model that has learned nothing."""

    def __init__(self):
        from cvdm_tf.config import default_config
        from cvdm_tf.runs import resolve_config
        from cvdm_tf.schedules import make_schedule

        super().__init__(0.0, 0.0)
        self.config = resolve_config(default_config("qpi"))
        self.model_config = self.config.model
        self.schedule = make_schedule(self.model_config)

    def prior_mean(self, y):
        return y[..., -1:]


@pytest.mark.parametrize("boundary", ["camera", "periodic"])
def test_a_model_that_learns_nothing_returns_the_tie_estimate(boundary):
    """The README's "a model that learns nothing samples TIE", through `reconstruct` with the default config's
    prior mean, residual scale and clip: the phase equals the TIE channel at the Tikhonov weight the config
    chooses (a camera frame: zero-padded TIE with the frame's weight added; a periodic field: FFT-TIE), computed by
    test_evaluation's NumPy TIE, to a small fraction of the phase range."""
    from test_evaluation import numpy_tie

    model = NothingLearned()
    # The sampler's output, before any refinement.
    data = dataclasses.replace(model.config.data, data_consistency=0, boundary=boundary)
    task = QPITask(data)
    raw = _measurement(task, (64, 64), seed=4)
    out = reconstruct(model, task, raw, samples=2, steps=20, method="ddpm", seed=1)
    weight = data.tie_regularization
    if data.tie_weight == "noise":  # the default: the weight the noise rule gives this pair
        from cvdm_tf.physics.noise_estimate import immerkaer_sigma
        from cvdm_tf.physics.tie import noise_adaptive_regularization

        weight = float(noise_adaptive_regularization(immerkaer_sigma(raw / raw.mean())))
        assert weight > 0
    if boundary == "camera":
        assert data.tie_solver == "pad" and data.tie_frame > 0  # the default
        weight += data.tie_frame * (2 * np.pi / 64) ** 4
    expected = numpy_tie(raw.astype(np.float64), dz=data.defocus_um, lam=data.wavelength_um,
                         dx=data.pixel_size_um, regularization=weight, pad=boundary == "camera")
    got = out["mean"][..., 0] - out["mean"].mean()
    assert np.abs(got - expected).max() < 0.01 * np.ptp(expected)
    assert out["std"].max() < 1e-3  # the samples agree: nothing to be unsure about


@pytest.mark.parametrize("tile", [256, 48])
def test_data_consistency_makes_a_model_that_learns_nothing_beat_tie_on_a_clean_pair(tile):
    """The default config refines each sample against its pair (`data.data_consistency`). On a noise-free
    periodic pair of a cell (`boundary = "periodic"`) the model that learns nothing then returns more than TIE:
    one step removes part of TIE's first-order error; its samples still agree. Tiled (48 px tiles of a 64 px
    image) the samples are blended and aligned before the whole image is refined."""
    model = NothingLearned()
    default = model.config.data.data_consistency
    assert default > 0  # the default config refines
    phase = cell_phantoms(1, 64, seed=3, peak=3.0)[0]
    raw = QPITask(DataConfig()).measure(tf.constant(phase)).numpy()
    truth = phase - phase.mean()
    errors = {}
    for steps in (0, default):
        task = QPITask(dataclasses.replace(model.config.data, data_consistency=steps, boundary="periodic"))
        out = reconstruct(model, task, raw, samples=2, steps=20, method="ddpm", seed=1, tile=tile)
        errors[steps] = np.abs(out["mean"][..., 0] - out["mean"].mean() - truth).mean()
        assert out["std"].max() < 1e-3
    assert errors[default] < 0.8 * errors[0], errors  # measured 0.0021 vs 0.0029 rad (one step)


def test_reconstruct_refuses_the_wrong_channel_count(qpi_task):
    with pytest.raises(InputError, match="has 1 channel"):
        reconstruct(PointMassModel(), qpi_task, np.ones((16, 16, 1), np.float32), samples=1, steps=2)
    with pytest.raises(InputError, match="size multiple 4"):
        reconstruct(PointMassModel(), qpi_task, np.ones((16, 16, 2), np.float32), samples=1, steps=2, tile=2)


def test_preview_is_an_rgb_strip_with_four_panels():
    rng = np.random.default_rng(1)
    panels = [rng.normal(size=(24, 20)) for _ in range(4)]
    strip = preview_image(*panels, unit="rad")
    assert strip.dtype == np.uint8 and strip.ndim == 3 and strip.shape[-1] == 3
    assert strip.shape[0] > 24 * 4 and strip.shape[1] > 4 * 20 * 4  # enlarged small images
    big = preview_image(*[np.zeros((2048, 1024))] * 4)  # shrunk, constant images are fine
    assert big.shape[0] < 600


# === The command, end to end on the tiny run ===


def _invoke(*args):
    result = CliRunner().invoke(main, ["infer", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    """Raw QPI intensity pairs as `cvdm-tf simulate` writes them: 24 x 20 and 40 x 40 (and 96 x 88 apart)."""
    task = QPITask(DataConfig(noise="none"))
    folder = tmp_path_factory.mktemp("measurements")
    io.write_tiff(folder / "good" / "small.tif", _measurement(task, (24, 20), seed=1))
    io.write_tiff(folder / "good" / "sub" / "square.tif", _measurement(task, (40, 40), seed=2))
    io.write_tiff(folder / "big.tif", _measurement(task, (96, 88), seed=3))
    return folder


@pytest.fixture(scope="module")
def infer_run(tiny_run, measurements, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer") / "out"
    result = _invoke("--model", tiny_run, "--input", measurements / "good", "--out", out,
                     "--samples", 2, "--steps", 3, "--seed", 5)
    return result, out


def _read(path):
    return sources.read_image(path)


def test_infer_samples_with_the_runs_sampler_unless_told(tiny_run, measurements, tmp_path):
    """K and T default to the run's sampler (what its card's scores used), and the first line says which."""
    result = _invoke("--model", tiny_run, "--input", measurements / "good" / "small.tif", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.stderr
    assert "K = 2 samples of T = 5 ddpm steps" in result.stderr  # tiny_qpi_config's sampler
    result = _invoke("--model", tiny_run, "--input", measurements / "good" / "small.tif", "--out", tmp_path / "b",
                     "--samples", 3, "--steps", 1, "--sampler", "ddim")
    assert result.exit_code == 0, result.stderr
    assert "K = 3 samples of T = 1 ddim steps" in result.stderr


@pytest.mark.slow
def test_infer_writes_all_outputs(infer_run):
    result, out = infer_run
    assert result.exit_code == 0, result.stderr
    for name, shape in (("small", (24, 20)), ("sub_square", (40, 40))):
        maps = {}
        for key in ("mean", "std", "schedule"):
            maps[key] = _read(out / f"{name}_{key}.tif")
            assert maps[key].shape == (*shape, 1) and maps[key].dtype == np.float32
            assert np.isfinite(maps[key]).all()
        assert (maps["std"] >= 0).all() and maps["std"].max() > 0  # K = 2 samples differ
        preview = _read(out / f"{name}_preview.png")
        assert preview.shape[-1] == 3 and preview.shape[0] > shape[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}_{k}" for n in ("small", "sub_square") for k in ("mean.tif", "std.tif", "schedule.tif", "preview.png"))
    assert "file 2/2" in result.stderr  # the progress line


@pytest.mark.slow
def test_infer_median_is_the_median_of_the_samples_and_antithetic_runs_need_an_even_k(tiny_run, measurements,
                                                                                       tmp_path):
    """`--median` adds NAME_median.tif: the per-pixel median of the (refined) samples the API returns for the same
    seed; a run sampling in antithetic pairs refuses an odd K in one line and writes nothing."""
    import cvdm_tf

    small = measurements / "good" / "small.tif"
    result = _invoke("--model", tiny_run, "--input", small, "--out", tmp_path / "m", "--samples", 3, "--steps", 2,
                     "--seed", 4, "--median")
    assert result.exit_code == 0, result.stderr
    written = _read(tmp_path / "m" / "small_median.tif")[..., 0]
    prediction = cvdm_tf.load(tiny_run).predict(_read(small), samples=3, steps=2, seed=4, keep_samples=True,
                                                median=True)
    np.testing.assert_allclose(written, np.median(prediction.samples, axis=0), atol=1e-5)
    np.testing.assert_allclose(prediction.median, written, atol=1e-5)
    assert np.abs(written - _read(tmp_path / "m" / "small_mean.tif")[..., 0]).max() > 1e-4  # not the mean
    result = _invoke("--model", tiny_run, "--input", small, "--out", tmp_path / "nomean", "--mean-network")
    assert result.exit_code != 0 and "has no mean network" in result.stderr
    assert not (tmp_path / "nomean").exists() or not any((tmp_path / "nomean").iterdir())

    antithetic = tmp_path / "antithetic"
    shutil.copytree(tiny_run, antithetic)
    config = antithetic / "config.toml"
    config.write_text(config.read_text().replace("antithetic = false", "antithetic = true"))
    assert "antithetic = true" in config.read_text()
    result = _invoke("--model", antithetic, "--input", small, "--out", tmp_path / "odd", "--samples", 3)
    assert result.exit_code != 0 and "antithetic pairs" in result.stderr and "--samples 3" in result.stderr
    assert not (tmp_path / "odd").exists() or not any((tmp_path / "odd").iterdir())
    result = _invoke("--model", antithetic, "--input", small, "--out", tmp_path / "even", "--samples", 2,
                     "--steps", 2)
    assert result.exit_code == 0, result.stderr

@pytest.mark.slow
def test_a_runs_point_estimate_is_written_unasked_and_named_by_the_api(tiny_run, measurements, tmp_path):
    """A run whose `sampler.estimate` is the median writes NAME_median.tif with no flag (the median of the samples
    the API returns for the same seed), the API's prediction names it as its point estimate, and the preview
    shows it (its panel differs from the mean's)."""
    import cvdm_tf

    run = tmp_path / "median-run"
    shutil.copytree(tiny_run, run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace('estimate = "mean"', 'estimate = "median"'))
    assert 'estimate = "median"' in config.read_text()
    small = measurements / "good" / "small.tif"
    for folder, model in (("median", run), ("mean", tiny_run)):
        result = _invoke("--model", model, "--input", small, "--out", tmp_path / folder, "--samples", 3,
                         "--steps", 2, "--seed", 4)
        assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "mean" / "small_median.tif").exists()
    prediction = cvdm_tf.load(run).predict(_read(small), samples=3, steps=2, seed=4, keep_samples=True)
    assert prediction.estimate == "median" and prediction.point_estimate is prediction.median
    np.testing.assert_allclose(prediction.median, np.median(prediction.samples, axis=0), atol=1e-5)
    np.testing.assert_allclose(_read(tmp_path / "median" / "small_median.tif")[..., 0], prediction.median,
                               atol=1e-5)
    np.testing.assert_array_equal(_read(tmp_path / "median" / "small_mean.tif"),
                                  _read(tmp_path / "mean" / "small_mean.tif"))
    assert not np.array_equal(_read(tmp_path / "median" / "small_preview.png"),
                              _read(tmp_path / "mean" / "small_preview.png"))


@pytest.mark.slow
def test_infer_progress_moves_within_one_image(tiny_run, measurements, tmp_path):
    """One image, one tile: the line reports steps between 0% and 100% (the sampler runs in chunks of about a
    tenth of T), and the outputs are those of the sampler's one-call loop."""
    import io as stdio

    from cvdm_tf.inference import infer_paths
    from cvdm_tf.progress import InferProgress

    stream = stdio.StringIO()
    infer_paths(tiny_run, measurements / "good" / "small.tif", tmp_path / "out", samples=2, steps=10, seed=3,
                progress=InferProgress(1, stream=stream, interval_s=0.0))
    lines = stream.getvalue().splitlines()
    steps = [line for line in lines if " step " in line]
    assert [line.split(" step ")[1].split(" ")[0] for line in steps] == [f"{i}/10" for i in range(1, 11)]
    assert any("[##########..........]" in line for line in steps)  # half way: the bar at 50%
    with_chunks = _read(tmp_path / "out" / "small_mean.tif")
    infer_paths(tiny_run, measurements / "good" / "small.tif", tmp_path / "plain", samples=2, steps=10, seed=3,
                progress=InferProgress(1, stream=stdio.StringIO()))
    np.testing.assert_array_equal(with_chunks, _read(tmp_path / "plain" / "small_mean.tif"))


@pytest.mark.slow
def test_infer_data_consistency_option_turns_the_refinement_off(infer_run, tiny_run, measurements, tmp_path):
    """The default run refines (data.data_consistency = 1); `--data-consistency 0` gives the sampler's own mean,
    the one `reconstruct` gives with the option off, and not the refined one."""
    from cvdm_tf.runs import load_run
    from cvdm_tf.sampler import sampler_for

    _, refined_out = infer_run
    out = tmp_path / "off"
    result = _invoke("--model", tiny_run, "--input", measurements / "good" / "small.tif", "--out", out,
                     "--samples", 2, "--steps", 3, "--seed", 5, "--data-consistency", 0)
    assert result.exit_code == 0, result.stderr
    config, task, model = load_run(tiny_run)
    assert task.refines
    raw = sources.read_image(measurements / "good" / "small.tif")
    off = reconstruct(model, QPITask(dataclasses.replace(config.data, data_consistency=0)), raw, samples=2, steps=3,
                      method=config.sampler.method, seed=5, sampler=sampler_for(model, config.sampler))
    np.testing.assert_allclose(_read(out / "small_mean.tif"), off["mean"], atol=1e-5)
    assert not np.allclose(_read(refined_out / "small_mean.tif"), off["mean"], atol=1e-3)


@pytest.mark.slow
def test_bfloat16_sampling_gives_the_float32_outputs_to_round_off(tiny_run, measurements, tmp_path):
    """`infer --precision bfloat16`: the same files, the mean within bfloat16 round-off of float32's."""
    for precision in ("bfloat16", "float32"):
        result = _invoke("--model", tiny_run, "--input", measurements / "good" / "small.tif", "--out",
                         tmp_path / precision, "--samples", 2, "--steps", 3, "--seed", 5, "--precision", precision)
        assert result.exit_code == 0, result.stderr
    low, high = _read(tmp_path / "bfloat16" / "small_mean.tif"), _read(tmp_path / "float32" / "small_mean.tif")
    assert not np.array_equal(low, high)
    np.testing.assert_allclose(low, high, atol=0.05 * np.abs(high).max())


@pytest.mark.slow
def test_same_seed_gives_the_same_outputs(infer_run, tiny_run, measurements, tmp_path):
    _, first = infer_run
    result = _invoke("--model", tiny_run, "--input", measurements / "good" / "small.tif", "--out", tmp_path,
                     "--samples", 2, "--steps", 3, "--seed", 5)
    assert result.exit_code == 0, result.stderr
    for key in ("mean", "std", "schedule"):
        np.testing.assert_array_equal(_read(tmp_path / f"small_{key}.tif"), _read(first / f"small_{key}.tif"))


@pytest.mark.slow
def test_bad_files_are_reported_and_the_good_ones_finished(tiny_run, measurements, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_good.tif").write_bytes((measurements / "good" / "small.tif").read_bytes())
    (folder / "b_garbage.tif").write_bytes(b"these bytes are not a TIFF " * 20)
    io.write_tiff(folder / "c_gray.tif", np.ones((24, 20), np.float32))
    out = tmp_path / "out"
    result = _invoke("--model", tiny_run, "--input", folder, "--out", out, "--samples", 2, "--steps", 3)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {folder / 'b_garbage.tif'}: not a readable image")
    assert errors[1].startswith(f"error: {folder / 'c_gray.tif'}: has 1 channel(s), the model needs 2")
    # Good outputs complete, nothing for the bad files, no temporary files.
    assert sorted(p.name for p in out.iterdir()) == [
        "a_good_mean.tif", "a_good_preview.png", "a_good_schedule.tif", "a_good_std.tif"]


@pytest.mark.slow
def test_large_image_goes_through_tiles(tiny_run, measurements, tmp_path):
    result = _invoke("--model", tiny_run, "--input", measurements / "big.tif", "--out", tmp_path,
                     "--samples", 2, "--steps", 3, "--tile", 32, "--batch-size", 4, "--sampler", "ddim")
    assert result.exit_code == 0, result.stderr
    assert "tile 16/16" in result.stderr  # 4 x 4 tiles of 32 px with 8 px overlap cover 96 x 88
    mean = _read(tmp_path / "big_mean.tif")
    assert mean.shape == (96, 88, 1) and np.isfinite(mean).all()
    assert (_read(tmp_path / "big_std.tif") >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["not a run", "empty folder", "missing input"])
def test_user_errors_are_one_line_and_exit_2(tiny_run, tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.tif").write_bytes(b"unused")
    model, source, expected = {
        "not a run": (tmp_path, tmp_path / "x.tif", "not a run folder"),
        "empty folder": (tiny_run, tmp_path / "empty", "no images found"),
        "missing input": (tiny_run, tmp_path / "nothing.tif", "no such file or folder"),
    }[case]
    result = _invoke("--model", model, "--input", source, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and expected in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_infer_reads_a_simulate_folder_and_skips_its_truth(tiny_run, tmp_path):
    """`cvdm-tf simulate` writes NAME.tif beside NAME_phase.tif: infer takes the measurement, not the truth."""
    from cvdm_tf.tasks import make_task

    truth = tmp_path / "truth"
    io.write_tiff(truth / "cell.tif", np.linspace(0, 2, 24 * 16, dtype=np.float32).reshape(24, 16))
    make_task("qpi").simulate_files(truth, tmp_path / "measured", noise="none", seed=0)
    assert {p.name for p in (tmp_path / "measured").iterdir()} == {"cell.tif", "cell_phase.tif"}
    out = tmp_path / "out"
    result = _invoke("--model", tiny_run, "--input", tmp_path / "measured", "--out", out, "--samples", 2,
                     "--steps", 2)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_mean.tif", "cell_preview.png", "cell_schedule.tif", "cell_std.tif"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["learned-global", "linear", "cosine"])  # "learned": every test on tiny_run
def test_train_with_each_schedule_kind_then_infer(kind, measurements, tmp_path):
    """`cvdm-tf train --schedule KIND` and `cvdm-tf infer` on its run. The magnitude image tau rho(1) is the
    closed form for the fixed schedules (linear: beta_min + (beta_max - beta_min) / 2; cosine: -log of
    cos^2(phi(t_max)) / cos^2(phi(0))) and one learned number everywhere for CVDM-simple."""
    import math

    from test_cli_train import TINY

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--schedule", kind, "--out", str(run)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = _invoke("--model", run, "--input", measurements / "good" / "small.tif", "--out", out,
                     "--samples", 2, "--steps", 3)
    assert result.exit_code == 0, result.stderr
    mean, std, schedule = (_read(out / f"small_{key}.tif") for key in ("mean", "std", "schedule"))
    assert mean.shape == (24, 20, 1) and np.isfinite(mean).all() and std.max() > 0
    if kind == "linear":
        np.testing.assert_allclose(schedule, 0.1 + (20.0 - 0.1) / 2, rtol=1e-5)
    elif kind == "cosine":
        s, t_max = 0.008, 1.0 - 1e-4
        phi = lambda t: (t + s) / (1 + s) * math.pi / 2  # noqa: E731
        np.testing.assert_allclose(schedule, 2 * math.log(math.cos(phi(0)) / math.cos(phi(t_max))), rtol=1e-4)
    else:
        assert np.ptp(schedule) <= 1e-6 * schedule.mean() and schedule.mean() > 0


# === The measurement's physics ===


def test_infer_takes_the_physics_from_flags_or_the_files_metadata_and_refuses_it_outside_the_range(
        tiny_run, tmp_path):
    """The TIE channel, the refinement and the outputs' pixel size follow the measurement's microscope: the
    pixel size in an OME-TIFF's metadata unless --pixel-size says otherwise; physics outside the model's training
    range is refused with one line naming the file and the range, and nothing is written."""
    import tifffile

    from cvdm_tf.runs import load_run
    from cvdm_tf.sampler import sampler_for

    config, task, model = load_run(tiny_run)
    microscope = dict(wavelength_um=0.60, pixel_size_um=0.16, defocus_um=2.0)  # inside the default range
    other = task.with_physics(**microscope)
    raw = _measurement(other, (24, 20), seed=6)
    path = tmp_path / "pair.ome.tif"
    tifffile.imwrite(path, np.moveaxis(raw, -1, 0), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.16, "PhysicalSizeY": 0.16, "PhysicalSizeXUnit": "µm"})
    run = lambda out, *flags: _invoke("--model", tiny_run, "--input", path, "--out", tmp_path / out,  # noqa: E731
                                      "--samples", 2, "--steps", 3, "--seed", 5, *flags)
    result = run("meta", "--wavelength", 0.6, "--defocus", 2.0)
    assert result.exit_code == 0, result.stderr
    assert "pixel size 0.16 um, from its metadata" in result.stderr
    assert io.tiff_pixel_size_um(tmp_path / "meta" / "pair_mean.tif") == pytest.approx(0.16)
    with tifffile.TiffFile(tmp_path / "meta" / "pair_mean.tif") as tif:  # OME, read by tifffile's parser
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    assert image["Pixels"]["PhysicalSizeX"] == pytest.approx(0.16)
    assert image["Pixels"]["PhysicalSizeXUnit"] == "\u00b5m" and image["Pixels"]["Channel"]["Name"] == "mean (rad)"
    assert f"model {tiny_run}, K = 2 samples of T = 3" in image["Description"]
    assert "wavelength 0.6 um, pixel size 0.16 um, defocus 2 um" in image["Description"]
    expected = reconstruct(model, other, raw, samples=2, steps=3, method=config.sampler.method, seed=5,
                           sampler=sampler_for(model, config.sampler))
    np.testing.assert_allclose(_read(tmp_path / "meta" / "pair_mean.tif"), expected["mean"], atol=1e-5)
    default = reconstruct(model, task, raw, samples=2, steps=3, method=config.sampler.method, seed=5,
                          sampler=sampler_for(model, config.sampler))
    assert not np.allclose(default["mean"], expected["mean"], atol=1e-3)  # the run's physics would differ
    # A flag wins over the metadata.
    result = run("flag", "--wavelength", 0.6, "--defocus", 2.0, "--pixel-size", 0.2)
    assert result.exit_code == 0, result.stderr
    assert io.tiff_pixel_size_um(tmp_path / "flag" / "pair_mean.tif") == pytest.approx(0.2)
    # Outside the range: F = 0.6 * 40 / 0.16^2 = 938.
    result = run("far", "--wavelength", 0.6, "--defocus", 40)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(path) in lines[0] and "lam dz / dx^2 938 is outside" in lines[0]
    assert "4-64" in lines[0] and not (tmp_path / "far").exists() or not any((tmp_path / "far").iterdir())
