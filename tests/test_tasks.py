"""The QPI task: units in and out, the TIE channel, the noise models' statistics."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.tasks.qpi import DataConfig
from cvdm_tf.data.phantoms import cell_phantoms
from cvdm_tf.tasks import make_task
from cvdm_tf.tasks.qpi import QPITask
from cvdm_tf.errors import InputError


def test_target_round_trip_is_offset_free():
    task = QPITask(DataConfig())
    phase = tf.constant(cell_phantoms(1, 32, seed=0)[0])
    x = task.normalize_target(phase)
    assert x.shape == (32, 32, 1)
    assert abs(float(tf.reduce_mean(x))) < 1e-6
    back = task.denormalize_target(x)[..., 0].numpy()
    np.testing.assert_allclose(back, phase.numpy() - phase.numpy().mean(), atol=1e-5)


def test_condition_is_invariant_to_illumination_level():
    task = QPITask(DataConfig(tie_channel=True))
    intensities = task.measure(tf.constant(cell_phantoms(1, 32, seed=1)[0]))
    y1, y2 = task.normalize_condition(intensities), task.normalize_condition(7.5 * intensities)
    assert y1.shape == (32, 32, 3)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), atol=1e-4)


def test_tie_channel_is_the_baseline_in_target_units():
    data = DataConfig(tie_channel=True, tie_regularization=1e-9)
    task = QPITask(data)
    phase = tf.constant(cell_phantoms(1, 64, seed=2)[0])
    y = task.normalize_condition(task.measure(phase))
    tie_phase = task.denormalize_target(y[..., 2:])[..., 0].numpy()
    truth = phase.numpy() - phase.numpy().mean()
    assert np.mean(np.abs(tie_phase - truth)) < 0.03  # noise-free periodic simulation: TIE is nearly exact (0.013)
    assert make_task("qpi", data).condition_channels == 3
    assert make_task("qpi", DataConfig()).condition_channels == 2


@pytest.mark.parametrize("noise", ["paper", "poisson", "none"])
def test_noise_models_are_seeded_and_shaped(noise):
    task = QPITask(dataclasses.replace(DataConfig(), noise=noise))
    flat = tf.ones([64, 64, 2])
    a = task.add_noise(flat, tf.constant([1, 2], tf.int64))
    b = task.add_noise(flat, tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.shape == flat.shape
    if noise == "none":
        np.testing.assert_array_equal(a.numpy(), flat.numpy())
    if noise == "poisson":
        # Poisson counts: variance of I = I / photons (+ read noise^2 / photons^2)
        d = task.data
        expected = 1.0 / d.photons_per_pixel + (d.read_noise / d.photons_per_pixel) ** 2
        assert abs(float(tf.math.reduce_variance(a)) / expected - 1) < 0.1


def test_noise_free_fraction_leaves_that_share_of_training_pairs_clean_and_never_touches_eval():
    phantom = {"phase": tf.constant(cell_phantoms(1, 32, seed=3, peak=2.0)[0][..., None])}
    seeds = [tf.constant([0, i], tf.int64) for i in range(200)]
    clean_y = QPITask(DataConfig()).normalize_condition(QPITask(DataConfig()).measure(phantom["phase"][..., 0]))

    def clean_share(fraction):
        task = QPITask(DataConfig(noise_free_fraction=fraction))
        return np.mean([np.allclose(task.pair(phantom, seed)[0], clean_y, atol=1e-5) for seed in seeds])

    assert clean_share(0.0) == 0.0 and clean_share(1.0) == 1.0
    assert abs(clean_share(0.25) - 0.25) < 0.1  # binomial sd over 200 pairs: 0.03
    # The noisy pairs are the very pairs a run without the option draws, and eval's cases are simulated as asked.
    task = QPITask(DataConfig(noise_free_fraction=0.25))
    noisy = [seed for seed in seeds[:20] if not np.allclose(task.pair(phantom, seed)[0], clean_y, atol=1e-5)]
    assert np.array_equal(task.pair(phantom, noisy[0])[0], QPITask(DataConfig()).pair(phantom, noisy[0])[0])
    raw = task.add_noise(task.measure(phantom["phase"][..., 0]), seeds[0], noise="paper")
    assert not np.allclose(raw, task.measure(phantom["phase"][..., 0]))
    with pytest.raises(InputError, match="noise_free_fraction"):
        DataConfig(noise_free_fraction=1.5)


def test_mirror_crops_give_a_clean_pair_a_nearly_exact_dct_tie_channel_where_periodic_crops_cannot():
    # Crops that cut through cells, as training crops do. Simulated periodically, the crop's opposite edges meet
    # with a phase jump and the FFT-TIE channel of a clean pair is far off; simulated on the mirror extension, the
    # DCT-TIE channel (whose boundaries match) is nearly exact, as FFT-TIE is on a whole image.
    phantom = cell_phantoms(1, 96, seed=5, peak=3.0)[0]
    crops = [phantom[i:i + 40, j:j + 40] for i, j in ((0, 10), (30, 50), (56, 20))]
    errors = {}
    for boundary in ("periodic", "mirror"):
        task = QPITask(DataConfig(noise="none", tie_channel=True, tie_regularization=1e-9, crop_boundary=boundary,
                                  tie_solver="dct" if boundary == "mirror" else "fft"))
        maes = []
        for crop in crops:
            y, x = task.pair({"phase": tf.constant(crop[..., None])}, tf.constant([0, 0], tf.int64))
            residual = task.denormalize_target(x - y[..., -1:]).numpy()
            maes.append(np.abs(residual - residual.mean()).mean())
        errors[boundary] = float(np.mean(maes))
    assert errors["mirror"] < 0.01 and errors["periodic"] > 4 * errors["mirror"], errors  # measured 0.002, 0.024
    with pytest.raises(InputError, match="crop_boundary"):
        DataConfig(crop_boundary="reflect")


def test_unknown_task_is_an_input_error():
    with pytest.raises(InputError, match="unknown task"):
        make_task("sr")


def test_absorbing_objects_darken_where_the_phase_is_large_and_zero_absorption_is_a_pure_phase_object(rng):
    phase = tf.constant(rng.uniform(0, 3.5, (32, 32)).astype(np.float32))
    pure = QPITask(DataConfig()).measure(phase)
    np.testing.assert_array_equal(QPITask(DataConfig(absorption=0.0)).measure(phase), pure)
    absorbing = QPITask(DataConfig(absorption=0.4))
    amplitude = absorbing.amplitude(phase).numpy()
    assert amplitude.min() >= 0.6 - 1e-6 and amplitude.max() <= 1.0
    np.testing.assert_allclose(amplitude, 1 - 0.4 * phase.numpy() / 3.5, atol=1e-6)
    # Energy: the mean intensity is the mean of |t|^2 (propagation conserves it), below 1.
    np.testing.assert_allclose(absorbing.measure(phase).numpy().mean(), np.mean(amplitude**2), rtol=1e-4)
    with pytest.raises(InputError, match="absorption"):
        DataConfig(absorption=1.0)


# === Camera frames and each pair's microscope ===


def test_a_camera_pair_is_the_centre_of_a_field_simulated_whole():
    field = cell_phantoms(1, 64, seed=4, peak=2.5)[0]
    task = QPITask(DataConfig(noise="none", tie_channel=True, tie_solver="pad", crop_boundary="camera",
                              image_size=32))
    assert task.field_size(32) == 64
    y, x = task.pair({"phase": tf.constant(field[..., None])}, tf.constant([0, 1], tf.int64))
    centre = (slice(16, 48), slice(16, 48))
    whole = task.measure(tf.constant(field)).numpy()
    np.testing.assert_allclose(x.numpy(), task.normalize_target(tf.constant(field[centre])).numpy(), atol=1e-6)
    np.testing.assert_allclose(y.numpy(), task.normalize_condition(tf.constant(whole[centre]), boundary="camera"
                                                                   ).numpy(), atol=1e-5)
    # Not the crop simulated on its own: its edges would wrap around.
    alone = task.normalize_condition(task.measure(tf.constant(field[centre]))).numpy()
    assert np.abs(alone[..., :2] - y.numpy()[..., :2]).max() > 0.1
    case = QPITask(DataConfig(camera_crop=32)).simulate_case("f", field, "none", (0, 0))
    np.testing.assert_allclose(case.measurement, whole[centre], atol=1e-6)
    np.testing.assert_array_equal(case.truth, field[centre])


def test_each_pair_gets_its_own_microscope_and_a_tie_channel_computed_with_it():
    # One wavelength and pixel size (no zoom), the Fresnel number drawn over 4 .. 64: each noise-free pair is the
    # frame of its own drawn microscope, and its TIE channel is solved with that microscope, not the default one
    # (F = 11.8), which would make the channel of a pair drawn at F = 64 five times too strong.
    data = DataConfig(noise="none", tie_channel=True, tie_solver="pad", tie_weight="fixed", tie_regularization=1e-4,
                      crop_boundary="camera", image_size=32, wavelength_min_um=0.521, wavelength_max_um=0.521,
                      pixel_size_min_um=0.21, pixel_size_max_um=0.21, fresnel_min=4.0, fresnel_max=64.0)
    task = QPITask(data)
    field = cell_phantoms(1, 64, seed=4, peak=2.0)[0]
    centre = (slice(16, 48), slice(16, 48))
    fresnel = []
    for i in range(6):
        seed = tf.constant([3, i], tf.int64)
        y, _ = task.pair({"phase": tf.constant(field[..., None])}, seed)
        drawn = data.training_range.draw(tf.random.experimental.stateless_fold_in(seed, 3))
        fresnel.append(float(drawn.fresnel_number))
        frame = task.measure(tf.constant(field), microscope=drawn).numpy()[centre]
        own = task.normalize_condition(tf.constant(frame), drawn, "camera").numpy()
        np.testing.assert_allclose(y.numpy(), own, atol=2e-4 * np.abs(own).max())
        default = task.normalize_condition(tf.constant(frame), boundary="camera").numpy()
        # TIE is linear in its source k dx^2 dI/dz / mean(I0) = (pi / F) (I(+dz) - I(-dz)) / mean(I0): solved with
        # the default microscope the channel is F / F_default times the right one.
        ratio = np.abs(default[..., -1]).mean() / np.abs(own[..., -1]).mean()
        assert ratio == pytest.approx(fresnel[-1] / data.microscope.fresnel_number, rel=1e-3)
    assert max(fresnel) > 2 * min(fresnel)


def test_the_training_range_is_pinned_and_a_measurement_outside_it_is_refused():
    task = QPITask(DataConfig())  # no range: the one microscope
    assert task.data.training_range.is_single and task.field_size(64) == 64
    other = task.with_physics(defocus_um=2.0)
    assert other.data.defocus_um == 2.0 and other.output_pixel_size_um == 0.21
    with pytest.raises(InputError, match="trained on one microscope only"):
        other.check_physics()
    ranged = QPITask(DataConfig(wavelength_min_um=0.45, wavelength_max_um=0.7, pixel_size_min_um=0.1,
                                pixel_size_max_um=0.35, fresnel_min=4, fresnel_max=64, crop_boundary="camera"))
    assert ranged.field_size(64) == 214  # 2 x 64 px at up to 0.35 / 0.21 of the source's pixel
    ranged.with_physics(wavelength_um=0.6, pixel_size_um=0.16, defocus_um=2.0).check_physics()
    with pytest.raises(InputError, match=r"lam dz / dx\^2 2\.36 is outside .* 4-64"):
        ranged.with_physics(defocus_um=0.2).check_physics()
    with pytest.raises(InputError, match="data.fresnel_min"):
        DataConfig(fresnel_min=10, fresnel_max=5)
