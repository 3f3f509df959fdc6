"""The tf.data pipeline: reproducible and resumable element by element, crops from whole held-out images, phase
scaling as documented, and the noise models' statistics."""

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.tasks.qpi import DataConfig
from cvdm_tf.data import sources
from cvdm_tf.data.pipeline import InMemoryBank, make_dataset
from cvdm_tf.tasks.qpi import QPITask, load_ground_truth
from cvdm_tf.errors import InputError

SIZE, BATCH = 16, 4


def _images(rng, shapes=((40, 48), (32, 32), (64, 36), (48, 48))):
    """Phase images in [0.5, 3.5] radians: no zeros, so a crop that touched the bank's zero padding shows."""
    return [(0.5 + 3.0 * rng.random(shape)).astype(np.float32) for shape in shapes]


def _batches(dataset, count):
    return [(y.numpy(), x.numpy()) for y, x in dataset.take(count)]


def _dataset(images, seed=0, start=0, **data):
    config = DataConfig(image_size=SIZE, **data)
    return make_dataset(QPITask(config), _bank(images), SIZE, BATCH, seed, start=start, augment=config.augment)


def _bank(images):
    return InMemoryBank([{"phase": image[..., None]} for image in images])


# === Reproducible and resumable ===


def test_same_seed_same_batches_other_seed_other_batches(rng):
    images = _images(rng)
    first, again = _batches(_dataset(images, seed=3), 3), _batches(_dataset(images, seed=3), 3)
    for (y1, x1), (y2, x2) in zip(first, again):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    other = _batches(_dataset(images, seed=4), 3)
    assert not any(np.array_equal(x1, x2) for (_, x1), (_, x2) in zip(first, other))


def test_start_reproduces_the_tail_of_an_uninterrupted_stream(rng):
    """What a resumed run relies on: starting at element k * batch gives batches k, k+1, ... exactly."""
    images = _images(rng)
    whole = _batches(_dataset(images, seed=7), 6)
    tail = _batches(_dataset(images, seed=7, start=2 * BATCH), 4)
    for (y1, x1), (y2, x2) in zip(whole[2:], tail):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("noise", ["paper", "poisson", "none"])
@pytest.mark.parametrize("tie_channel", [False, True])
def test_crops_have_the_configured_size_and_finite_values(rng, noise, tie_channel):
    for y, x in _batches(_dataset(_images(rng), noise=noise, tie_channel=tie_channel), 2):
        assert y.shape == (BATCH, SIZE, SIZE, 3 if tie_channel else 2)
        assert x.shape == (BATCH, SIZE, SIZE, 1)
        assert np.isfinite(y).all() and np.isfinite(x).all()
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)  # offset-free targets


# === Whole images held out ===


def test_validation_holds_out_whole_images(rng):
    images = _images(rng, [(32 + 4 * k, 40) for k in range(10)])
    items = [(f"image{k}", image) for k, image in enumerate(images)]
    train, val = sources.split_by_image(items, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8
    assert {name for name, _ in train}.isdisjoint({name for name, _ in val})
    assert sorted(train + val, key=lambda item: item[0]) == sorted(items, key=lambda item: item[0])
    # Every training crop is a window of exactly one training image, never of a held-out one, never padding.
    bank = _bank([image for _, image in train])
    for k in range(40):
        crop = bank.random_crop(SIZE, tf.constant([k, 0], tf.int64))["phase"].numpy()[..., 0]
        assert crop.min() >= 0.5
        owners = [name for name, image in items if _is_window(crop, image)]
        assert len(owners) == 1 and owners[0] in dict(train), owners


def _is_window(crop, image):
    windows = np.lib.stride_tricks.sliding_window_view(image, crop.shape)
    return bool(np.any(np.all(windows == crop, axis=(-2, -1))))


# === Phase scaling ===


@pytest.fixture
def ramp_source(tmp_path):
    """A 64 x 64 float image rising linearly from 0 to 1 left to right."""
    path = tmp_path / "ramp.npy"
    np.save(path, np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1)))
    return str(path)


def test_image_scaling_keeps_the_phase_gradient_of_the_whole_image(ramp_source):
    """phase_scaling = "image": the whole image goes to [0, phase_max], crops keep its gradient."""
    config = DataConfig(source=ramp_source, image_size=SIZE, phase_scaling="image", noise="none", augment=False)
    [(name, phase)] = load_ground_truth(config, SIZE)
    assert name == "ramp" and phase.min() == 0.0 and phase.max() == pytest.approx(config.phase_max)
    for _, x in _batches(make_dataset(QPITask(config), _bank([phase]), SIZE, BATCH, 0, augment=False), 2):
        step = np.diff(x[..., 0], axis=2)  # along the ramp, in target units 2 phi / phase_max
        np.testing.assert_allclose(step, 2.0 / 63, rtol=1e-4)


def test_crop_scaling_stretches_every_crop_to_phase_max(ramp_source):
    """phase_scaling = "crop": every crop spans [0, phase_max] (the reference's choice)."""
    config = DataConfig(source=ramp_source, image_size=SIZE, phase_scaling="crop", noise="none", augment=False)
    [(_, image)] = load_ground_truth(config, SIZE)
    assert image.min() == 0.0 and image.max() == 1.0  # left in [0, 1]: the crops are scaled
    for _, x in _batches(make_dataset(QPITask(config), _bank([image]), SIZE, BATCH, 0, augment=False), 2):
        span = x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))
        np.testing.assert_allclose(span, 2.0, rtol=1e-5)  # = 2 phase_max / phase_max


def test_images_smaller_than_the_crop_are_skipped_by_name(tmp_path):
    np.save(tmp_path / "small.npy", np.random.default_rng(0).random((12, 40)).astype(np.float32))
    np.save(tmp_path / "large.npy", np.random.default_rng(1).random((32, 32)).astype(np.float32))
    messages = []
    items = load_ground_truth(DataConfig(source=str(tmp_path), image_size=SIZE), SIZE, warn=messages.append)
    assert [name for name, _ in items] == ["large"]
    assert messages == ["skipping small (12 x 40): smaller than the 16 x 16 training crop"]
    with pytest.raises(InputError, match="no image is at least 40 x 40 pixels"):
        load_ground_truth(DataConfig(source=str(tmp_path), image_size=SIZE), 40)


# === Noise models (on flat fields, so every pixel is a sample of the same distribution) ===

FLAT = (256, 256, 2)


def test_paper_noise_has_mean_and_std_lam_n_within_noise_max():
    """paper: I + lam_n + lam_n * N(0, 1), one lam_n ~ U(0, noise_max) per pair (tasks.py, step 3)."""
    task = QPITask(DataConfig(noise="paper", noise_max=0.2))
    intensities = tf.fill(FLAT, 0.7)
    lams = []
    for seed in range(30):
        difference = (task.add_noise(intensities, tf.constant([seed, 1], tf.int64)) - intensities).numpy()
        for channel in range(2):  # the same lam_n for both images of the pair
            values = difference[..., channel]
            assert values.mean() == pytest.approx(values.std(), rel=0.02)
            lams.append(values.mean())
        assert lams[-1] == pytest.approx(lams[-2], rel=0.03)
    assert 0.0 <= min(lams) < 0.03 and 0.17 < max(lams) <= 0.2 * 1.02  # spread over [0, noise_max]


@pytest.mark.parametrize("level", [0.1, 0.5, 1.5])
@pytest.mark.parametrize("read_noise", [0.0, 2.0])
def test_poisson_noise_variance_is_intensity_over_photons(level, read_noise):
    """poisson: counts ~ Poisson(I * photons) plus Gaussian read noise, divided by photons, so the mean is I and
    the variance I / photons + (read_noise / photons)^2."""
    photons = 1000.0
    task = QPITask(DataConfig(noise="poisson", photons_per_pixel=photons, read_noise=read_noise))
    noisy = task.add_noise(tf.fill(FLAT, level), tf.constant([5, 6], tf.int64)).numpy()
    assert noisy.mean() == pytest.approx(level, rel=2e-3)
    assert noisy.var() == pytest.approx(level / photons + (read_noise / photons) ** 2, rel=0.03)


def test_no_noise_is_the_identity():
    intensities = tf.random.stateless_uniform(FLAT, seed=[0, 0])
    np.testing.assert_array_equal(QPITask(DataConfig(noise="none")).add_noise(intensities, [1, 2]), intensities)


def test_file_bank_crops_equal_in_memory_crops(rng):
    """The file-backed bank reads the same windows (all arrays of an example at their own grids) as the in-memory
    one, for the same seeds: same sizes, same random draws, only where the pixels live differs."""
    from cvdm_tf.data.pipeline import FileBank

    examples = [{"wide": rng.random((h // 2, w // 2, 1)).astype(np.float32),
                 "fine": rng.random((h, w, 1)).astype(np.float32)} for h, w in ((32, 40), (48, 32), (36, 36))]
    divisors = {"wide": 2, "fine": 1}
    memory = InMemoryBank(examples, divisors)
    loads = []

    def load(index):
        loads.append(index)
        return examples[index]

    files = FileBank([e["fine"].shape[:2] for e in examples], load, {"wide": 1, "fine": 1}, divisors)
    for k in range(12):
        seed = tf.constant([k, 3], tf.int64)
        a, b = memory.random_crop(16, seed), files.random_crop(16, seed)
        assert a["wide"].shape == (8, 8, 1) and a["fine"].shape == (16, 16, 1)
        for name in divisors:
            np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
        # The two grids show the same field of view: the fine crop binned 2x2 sits where the coarse crop is.
        example = examples[loads[-1]]
        top, left = _find(example["fine"][..., 0], a["fine"].numpy()[..., 0])
        assert top % 2 == 0 and left % 2 == 0
        np.testing.assert_array_equal(example["wide"][top // 2: top // 2 + 8, left // 2: left // 2 + 8],
                                      a["wide"].numpy())
    assert len(loads) == 12  # one read per crop, nothing kept


def _find(image, crop):
    windows = np.lib.stride_tricks.sliding_window_view(image, crop.shape)
    top, left = np.argwhere(np.all(windows == crop, axis=(-2, -1)))[0]
    return int(top), int(left)
