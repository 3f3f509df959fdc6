"""A measurement's physics (cvdm_tf.physics.microscope): the Fresnel number as the one number the pair depends on,
the training range's draws and its refusals."""

import math

import numpy as np
import pytest
import tensorflow as tf

from cvdm_tf.data.phantoms import cell_phantoms
from cvdm_tf.errors import InputError
from cvdm_tf.physics.fresnel import two_shot_intensities
from cvdm_tf.physics.microscope import Microscope, MicroscopeRange
from cvdm_tf.physics.tie import tie_fft

BRIGHTFIELD = MicroscopeRange((0.45, 0.70), (0.10, 0.35), (4.0, 64.0))


def test_the_pair_depends_on_wavelength_pixel_and_defocus_only_through_the_fresnel_number():
    # Goodman's transfer function in pixel units is exp(-i pi (lam dz / dx^2) |f_px|^2): two microscopes with one
    # F record the same pair of a phase map sampled on pixels, and TIE returns the same phase from it.
    phase = tf.constant(cell_phantoms(1, 64, seed=2, peak=2.5)[0], tf.float64)
    a = Microscope(0.521, 0.21, 1.0)
    b = Microscope(0.650, 0.30, a.fresnel_number * 0.30**2 / 0.650)
    c = Microscope(0.650, 0.30, 1.0)  # same wavelength and pixel as b, another F
    pairs = [two_shot_intensities(phase, m.defocus_um, m.wavelength_um, m.pixel_size_um).numpy() for m in (a, b, c)]
    np.testing.assert_allclose(pairs[0], pairs[1], atol=1e-9)
    assert np.abs(pairs[0] - pairs[2]).max() > 0.05
    tie = [tie_fft(p, m.defocus_um, m.wavelength_um, m.pixel_size_um, 1e-9).numpy() for p, m in zip(pairs, (a, b))]
    np.testing.assert_allclose(tie[0], tie[1], atol=1e-9)
    assert a.fresnel_number == pytest.approx(0.521 / 0.21**2)


def test_draws_cover_the_range_with_a_log_uniform_fresnel_number():
    draws = [BRIGHTFIELD.draw(tf.constant([7, i], tf.int64)) for i in range(400)]
    lam = np.array([float(m.wavelength_um) for m in draws])
    dx = np.array([float(m.pixel_size_um) for m in draws])
    fresnel = np.array([float(m.fresnel_number) for m in draws])
    assert 0.45 <= lam.min() and lam.max() <= 0.70 and 0.10 <= dx.min() and dx.max() <= 0.35
    assert 4.0 * (1 - 1e-4) <= fresnel.min() and fresnel.max() <= 64.0 * (1 + 1e-4)
    # Log-uniform: a quarter of the draws in each octave of 4 .. 64 (binomial sd over 400: 0.022).
    octaves = np.histogram(np.log2(fresnel), bins=[2, 3, 4, 5, 6])[0] / len(fresnel)
    np.testing.assert_allclose(octaves, 0.25, atol=0.07)
    assert all(BRIGHTFIELD.problem(Microscope(float(m.wavelength_um), float(m.pixel_size_um), float(m.defocus_um)))
               is None for m in draws[:20])


@pytest.mark.parametrize("microscope, named", [
    (Microscope(0.80, 0.21, 1.0), "wavelength 0.8 um"),
    (Microscope(0.52, 0.05, 0.1), "pixel size 0.05 um"),
    (Microscope(0.52, 0.21, 20.0), "lam dz / dx^2 236"),
    (Microscope(0.52, 0.21, 0.2), "lam dz / dx^2 2.36"),
])
def test_a_microscope_outside_the_range_is_named_with_the_range(microscope, named):
    problem = BRIGHTFIELD.problem(microscope)
    assert problem.startswith(named) and "wavelength 0.45-0.7 um, pixel size 0.1-0.35 um, lam dz / dx^2 4-64" in problem
    assert BRIGHTFIELD.problem(Microscope(0.60, 0.16, 2.0)) is None  # the second microscope


def test_a_single_microscope_range_admits_only_that_microscope():
    single = MicroscopeRange.single(Microscope(0.521, 0.21, 1.0))
    assert single.is_single and single.problem(Microscope(0.521, 0.21, 1.0)) is None
    problem = single.problem(Microscope(0.521, 0.21, 1.5))
    assert "trained on one microscope only" in problem and "defocus 1 um" in problem
    with pytest.raises(InputError, match="defocus: must be a positive number"):
        Microscope(0.5, 0.2, -1.0).check()
    with pytest.raises(InputError, match="wavelength: must be a positive number"):
        Microscope(math.nan, 0.2, 1.0).check()


def test_graph_assertions_fail_outside_the_range_and_pass_inside():
    @tf.function
    def checked(wavelength, pixel, defocus):
        with tf.control_dependencies(BRIGHTFIELD.assert_contains(Microscope(wavelength, pixel, defocus))):
            return tf.identity(wavelength)

    assert float(checked(tf.constant(0.6), tf.constant(0.16), tf.constant(2.0))) == pytest.approx(0.6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the range the model was trained on"):
        checked(tf.constant(0.6), tf.constant(0.16), tf.constant(20.0))
