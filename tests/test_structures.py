"""Synthetic structures: determinism, range, the character of each kind measured by a morphological property,
and physical sizes that follow the pixel size."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import euler_number, label, regionprops
from skimage.morphology import skeletonize

from cvdm_tf.data.structures import STRUCTURES, cell, structure
from cvdm_tf.errors import InputError

PIXEL_SIZE_UM = 0.0313
SEEDS = range(4)


def _mask(image):
    """Where the structure is: above 10 % of the maximum."""
    return image > 0.1


def _free_ends_per_um(mask, pixel_size_um):
    """Skeleton end points away from the border, per um of skeleton: filament ends inside the field of view."""
    skeleton = skeletonize(mask)
    neighbours = ndimage.convolve(skeleton.astype(int), np.ones((3, 3), int), mode="constant") - 1
    ends = skeleton & (neighbours == 1)
    ends[:4], ends[-4:], ends[:, :4], ends[:, -4:] = False, False, False, False
    return ends.sum() / (skeleton.sum() * pixel_size_um)


def _largest_component_fraction(mask):
    sizes = np.bincount(label(mask, connectivity=2).ravel())[1:]
    return sizes.max() / sizes.sum()


# --- Contract --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STRUCTURES)
def test_structure_is_deterministic_per_seed_and_varies_between_seeds(kind):
    first = structure(kind, 64, np.random.default_rng(5))
    again = structure(kind, 64, np.random.default_rng(5))
    other = structure(kind, 64, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("kind", STRUCTURES)
@pytest.mark.parametrize("size", [16, 64, (48, 80)])
def test_structure_is_a_finite_density_with_maximum_one(kind, size):
    image = structure(kind, size, np.random.default_rng(0))
    expected_shape = (size, size) if isinstance(size, int) else size
    assert image.shape == expected_shape and image.dtype == np.float32
    assert np.all(np.isfinite(image))
    assert image.min() >= 0.0 and image.max() == 1.0


def test_cell_draws_a_kind_and_its_structure():
    kind, image = cell(32, np.random.default_rng(1))
    assert kind in STRUCTURES
    np.testing.assert_array_equal(image, cell(32, np.random.default_rng(1))[1])
    assert {cell(16, np.random.default_rng(seed))[0] for seed in range(20)} == set(STRUCTURES)
    assert cell(16, np.random.default_rng(2), kinds=["er"])[0] == "er"


@pytest.mark.parametrize(
    "call",
    [
        lambda: structure("mitochondria", 32, np.random.default_rng(0)),
        lambda: structure("er", 0, np.random.default_rng(0)),
        lambda: structure("er", (32, 32, 3), np.random.default_rng(0)),
        lambda: structure("er", 32, np.random.default_rng(0), pixel_size_um=0.0),
        lambda: cell(32, np.random.default_rng(0), kinds=()),
        lambda: cell(32, np.random.default_rng(0), kinds=("ccps", "nuclei")),
    ],
)
def test_bad_arguments_raise_input_error(call):
    with pytest.raises(InputError):
        call()


# --- Character of each kind (256 px = 8 um; the ranges quoted were measured over seeds 0-19) -------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ccps_are_small_separate_puncta(seed):
    image = structure("ccps", 256, np.random.default_rng(seed))
    regions = regionprops(label(_mask(image), connectivity=2), intensity_image=image)
    diameters_um = np.array([r.equivalent_diameter_area * PIXEL_SIZE_UM for r in regions])
    signal = np.array([r.image_intensity.sum() for r in regions])
    # Rings of 80-150 nm with a 25-40 nm coat: 0.10-0.20 um across at 10 % of the maximum; 95-100 % of the
    # signal is in such puncta (a few pits touch); the largest component holds 2-8 % of the mask.
    puncta = (diameters_um > 0.05) & (diameters_um < 0.3)
    assert signal[puncta].sum() > 0.9 * signal.sum()
    assert _largest_component_fraction(_mask(image)) < 0.2


def test_ccps_are_hollow_at_fine_sampling():
    # At 10 nm pixels a 80-150 nm ring with a 25-40 nm coat is darker at its centre than on its rim.
    image = structure("ccps", 256, np.random.default_rng(0), pixel_size_um=0.01)
    regions = regionprops(label(_mask(image), connectivity=2), intensity_image=image)
    hollow = [
        r.image_intensity[tuple(np.round(r.centroid_local).astype(int))] < 0.8 * r.intensity_max for r in regions
    ]
    assert np.mean(hollow) > 0.5  # 0.92-1.00 of the pits (seeds 0-9)


@pytest.mark.parametrize("kind", ["microtubules", "f-actin"])
@pytest.mark.parametrize("seed", SEEDS)
def test_filaments_are_thin_and_elongated(kind, seed):
    image = structure(kind, 256, np.random.default_rng(seed))
    mask = _mask(image)
    # Thin: the skeleton is most of the mask (0.58-0.72; ER 0.18-0.31, puncta 0.15-0.46).
    assert skeletonize(mask).sum() > 0.5 * mask.sum()
    # Elongated: almost all of the mask is in components longer than 1 um (0.95-1.00).
    regions = regionprops(label(mask, connectivity=2))
    long_area = sum(r.area for r in regions if r.axis_major_length * PIXEL_SIZE_UM > 1.0)
    assert long_area > 0.9 * mask.sum()


@pytest.mark.parametrize("seed", SEEDS)
def test_microtubules_are_long_and_f_actin_short(seed):
    # Free filament ends per um of skeleton: microtubules (4-20 um, through the field) 0.03-0.42,
    # f-actin (0.5-3 um) 0.66-1.66.
    microtubules = _free_ends_per_um(_mask(structure("microtubules", 256, np.random.default_rng(seed))), PIXEL_SIZE_UM)
    actin = _free_ends_per_um(_mask(structure("f-actin", 256, np.random.default_rng(seed))), PIXEL_SIZE_UM)
    assert microtubules < 0.5 < actin


@pytest.mark.parametrize("seed", SEEDS)
def test_er_is_one_network_of_wide_tubules_with_loops(seed):
    image = structure("er", 256, np.random.default_rng(seed))
    mask = _mask(image)
    assert _largest_component_fraction(mask) > 0.8  # one network (0.86-1.00)
    assert euler_number(mask, connectivity=2) < -10  # many loops: polygons (-160 to -17)
    assert skeletonize(mask).sum() < 0.4 * mask.sum()  # tubules 50-100 nm, several pixels wide (0.18-0.31)
    assert _free_ends_per_um(mask, PIXEL_SIZE_UM) < 0.15  # junctions, few open ends (0.00-0.10)


# --- Physical units --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STRUCTURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_same_field_at_half_the_pixel_size_is_the_same_structure(kind, seed):
    # Draws depend on the field of view in um only: 64 px of 31.3 nm and 128 px of 15.65 nm show the same
    # structure (correlation after 2 x 2 averaging: 0.98-1.00 over seeds 0-19; f-actin, thinner than a pixel,
    # lowest).
    coarse = structure(kind, 64, np.random.default_rng(seed), PIXEL_SIZE_UM)
    fine = structure(kind, 128, np.random.default_rng(seed), PIXEL_SIZE_UM / 2)
    averaged = fine.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.corrcoef(coarse.ravel(), averaged.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("seed", SEEDS)
def test_puncta_span_twice_the_pixels_at_half_the_pixel_size(seed):
    def median_diameter_px(pixel_size_um, size):
        image = structure("ccps", size, np.random.default_rng(seed), pixel_size_um)
        return np.median([r.equivalent_diameter_area for r in regionprops(label(_mask(image), connectivity=2))])

    ratio = median_diameter_px(PIXEL_SIZE_UM / 2, 256) / median_diameter_px(PIXEL_SIZE_UM, 128)
    assert 1.7 < ratio < 2.2  # 1.81-2.03 (seeds 0-19): the bilinear splat adds a fixed fraction of a pixel
