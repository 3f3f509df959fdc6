"""Tests for cvdm_tf.data.biosr_files: a tiny BioSR tree written with mrcfile, paired TIFFs, the CVDM npz,
splits by cell, every bad input -> one-line InputError, and percentile normalisation (NumPy == TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from cvdm_tf.data.biosr_files import (
    PairFiles,
    find_pairs,
    load_pair,
    percentile_normalize,
    percentile_normalize_tf,
    read_mrc,
    read_npz_pairs,
    read_widefield,
    split_by_cell,
)
from cvdm_tf.errors import InputError

H, W, FRAMES = 8, 8, 9
CELLS = ("Cell_001", "Cell_002", "Cell_010")  # Cell_010 checks the natural sort (after Cell_002)
LEVELS = (1, 2)

# === Helpers ===


def _write_mrc(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, data=data, overwrite=True):
        pass
    return path


def _raw(rng, frames=FRAMES, h=H, w=W) -> np.ndarray:
    return rng.integers(0, 4000, (frames, h, w), dtype=np.uint16)


def _target(rng, h=2 * H, w=2 * W) -> np.ndarray:
    return rng.random((h, w), dtype=np.float32)


def _biosr_tree(root: Path, rng) -> dict:
    """Microtubules (per-cell SIM_gt) and ER (per-level GTSIM), 3 cells x 2 levels; returns what was written."""
    written = {}
    for cell in CELLS:
        mt = root / "Microtubules" / cell
        target = _write_mrc(mt / "SIM_gt.mrc", _target(rng))
        _write_mrc(mt / "RawSIMData_gt.mrc", _raw(rng))  # the high-SNR raw stack: not a pair
        for level in LEVELS:
            raw = _raw(rng)
            written[("Microtubules", cell, level)] = (raw, mrcfile.read(target))
            _write_mrc(mt / f"RawSIMData_level_{level:02d}.mrc", raw)
        er = root / "ER" / cell
        for level in LEVELS:
            raw, gt = _raw(rng), _target(rng)
            written[("ER", cell, level)] = (raw, gt)
            _write_mrc(er / "RawSIMData" / f"RawSIMData_level_{level:02d}.mrc", raw)
            _write_mrc(er / "GTSIM" / f"GTSIM_level_{level:02d}.mrc", gt)
    return written


def _expect(call, path, *fragments: str) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def tree(tmp_path, rng):
    return tmp_path, _biosr_tree(tmp_path, rng)


# === BioSR tree ===


def test_biosr_tree_found_with_names_cells_and_levels(tree):
    root, written = tree
    pairs = find_pairs(root)
    assert len(pairs) == 12
    assert [p.structure for p in pairs] == ["ER"] * 6 + ["Microtubules"] * 6
    assert [p.cell for p in pairs[:6:2]] == [f"ER/{c}" for c in CELLS]
    assert [p.level for p in pairs[:2]] == [1, 2]
    assert pairs[-1].name == "Microtubules_Cell_010_level_02"
    assert len({p.name for p in pairs}) == 12
    assert all(p.frames == FRAMES for p in pairs)
    er = pairs[1]
    assert er.widefield == root / "ER" / "Cell_001" / "RawSIMData" / "RawSIMData_level_02.mrc"
    assert er.target == root / "ER" / "Cell_001" / "GTSIM" / "GTSIM_level_02.mrc"
    assert pairs[6].target == root / "Microtubules" / "Cell_001" / "SIM_gt.mrc"
    assert find_pairs(root) == pairs  # deterministic


def test_biosr_pairs_load_with_widefield_the_sum_of_frames(tree):
    root, written = tree
    for pair in find_pairs(root):
        widefield, target = load_pair(pair)
        raw, gt = written[(pair.structure, pair.cell.split("/")[1], pair.level)]
        assert widefield.dtype == np.float32 and target.dtype == np.float32
        np.testing.assert_array_equal(widefield, raw.sum(axis=0).astype(np.float32))
        np.testing.assert_array_equal(target, gt)
        assert target.shape == (2 * H, 2 * W)


def test_structure_folder_as_root(tree):
    root, _ = tree
    pairs = find_pairs(root / "Microtubules")
    assert len(pairs) == 6 and {p.structure for p in pairs} == {"Microtubules"}
    assert pairs[0].cell == "Microtubules/Cell_001"


@pytest.mark.parametrize(
    ("structures", "levels", "count", "expected_structures", "expected_levels"),
    [
        (("microtubules",), None, 6, {"Microtubules"}, {1, 2}),
        ("er", None, 6, {"ER"}, {1, 2}),
        (("MICROTUBULES", "ccps"), (2,), 3, {"Microtubules"}, {2}),
        (None, [1], 6, {"ER", "Microtubules"}, {1}),
    ],
)
def test_filters(tree, structures, levels, count, expected_structures, expected_levels):
    root, _ = tree
    pairs = find_pairs(root, structures=structures, levels=levels)
    assert len(pairs) == count
    assert {p.structure for p in pairs} == expected_structures
    assert {p.level for p in pairs} == expected_levels


def test_filters_that_match_nothing_say_what_was_looked_for(tree):
    root, _ = tree
    _expect(lambda: find_pairs(root, levels=[7]), root, "no image pairs", "RawSIMData_level_LL.mrc", "levels=[7]")
    _expect(lambda: find_pairs(root, structures=["CCPs"]), root, "structures=['ccps']")


def test_empty_folder_names_the_layouts(tmp_path):
    message = _expect(lambda: find_pairs(tmp_path), tmp_path, "no image pairs")
    assert "SIM_gt.mrc" in message and "GTSIM" in message and "wf/NAME" in message
    _expect(lambda: find_pairs(tmp_path / "missing"), tmp_path / "missing", "no such folder")


def test_cell_without_target_names_cell_and_file(tmp_path, rng):
    cell = tmp_path / "CCPs" / "Cell_004"
    _write_mrc(cell / "RawSIMData_level_01.mrc", _raw(rng))
    _expect(lambda: find_pairs(tmp_path), cell, "SIM_gt.mrc")
    # ...but a filtered-out level does not trip over it.
    _write_mrc(tmp_path / "CCPs" / "Cell_005" / "RawSIMData_level_02.mrc", _raw(rng))
    _write_mrc(tmp_path / "CCPs" / "Cell_005" / "SIM_gt.mrc", _target(rng))
    assert [p.cell for p in find_pairs(tmp_path, levels=[2])] == ["CCPs/Cell_005"]


def test_er_level_without_target(tmp_path, rng):
    cell = tmp_path / "ER" / "Cell_001"
    _write_mrc(cell / "RawSIMData" / "RawSIMData_level_03.mrc", _raw(rng))
    _write_mrc(cell / "GTSIM" / "GTSIM_level_01.mrc", _target(rng))
    _expect(lambda: find_pairs(tmp_path), cell, "GTSIM_level_03.mrc")


def test_nonlinear_cells_are_skipped_with_a_warning(tree, rng):
    root, _ = tree
    cell = root / "F-actin_Nonlinear" / "Cell_001"
    _write_mrc(cell / "RawSIMData_level_01.mrc", _raw(rng, frames=25))
    _write_mrc(cell / "SIM_gt_a.mrc", _target(rng))
    _write_mrc(cell / "SIM_gt_b.mrc", _target(rng))
    with pytest.warns(UserWarning, match="F-actin_Nonlinear"):
        pairs = find_pairs(root)
    assert len(pairs) == 12


# === Paired images and npz ===


def test_paired_tiff_folder(tmp_path, rng):
    single, stack = rng.random((H, W), dtype=np.float32), _raw(rng)
    targets = [_target(rng), _target(rng)]
    (tmp_path / "wf").mkdir()
    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "wf" / "a.tif", single)
    tifffile.imwrite(tmp_path / "wf" / "b.tif", stack)
    for name, target in zip("ab", targets):
        tifffile.imwrite(tmp_path / "gt" / f"{name}.tif", target)
    tifffile.imwrite(tmp_path / "gt" / "unused.tif", targets[0])  # a target without input is ignored

    pairs = find_pairs(tmp_path)
    assert [(p.name, p.cell, p.level, p.frames) for p in pairs] == [("a", "a", None, 1), ("b", "b", None, 9)]
    widefield, target = load_pair(pairs[0])
    np.testing.assert_array_equal(widefield, single)
    np.testing.assert_array_equal(target, targets[0])
    widefield, _ = load_pair(pairs[1])
    np.testing.assert_array_equal(widefield, stack.sum(axis=0))
    # A levels filter drops pairs without a level.
    _expect(lambda: find_pairs(tmp_path, levels=[1]), tmp_path, "no image pairs")


def test_paired_widefield_without_target(tmp_path, rng):
    (tmp_path / "Mine" / "wf").mkdir(parents=True)
    (tmp_path / "Mine" / "gt").mkdir()
    tifffile.imwrite(tmp_path / "Mine" / "gt" / "a.tif", _target(rng))
    tifffile.imwrite(tmp_path / "Mine" / "wf" / "a.tif", rng.random((H, W), dtype=np.float32))
    tifffile.imwrite(tmp_path / "Mine" / "wf" / "b.tif", rng.random((H, W), dtype=np.float32))
    _expect(lambda: find_pairs(tmp_path), tmp_path / "Mine" / "wf" / "b.tif", "no target")
    (tmp_path / "Mine" / "wf" / "b.tif").unlink()
    assert [p.cell for p in find_pairs(tmp_path)] == ["Mine/a"]


@pytest.mark.parametrize("channel_axis", [True, False])
def test_npz_on_both_grids(tmp_path, rng, channel_axis):
    small = rng.random((3, H, W), dtype=np.float32)
    y = rng.random((3, 2 * H, 2 * W), dtype=np.float32)
    upsampled = small.repeat(2, axis=1).repeat(2, axis=2)  # what the reference feeds: x on the target grid
    add = (lambda a: a[..., None]) if channel_axis else (lambda a: a)
    for x in (small, upsampled):
        path = tmp_path / "biosr.npz"
        np.savez(path, x=add(x), y=add(y))
        out = read_npz_pairs(path)
        assert [name for name, _, _ in out] == ["biosr_000", "biosr_001", "biosr_002"]
        for i, (_, widefield, target) in enumerate(out):
            np.testing.assert_allclose(widefield, small[i], rtol=1e-6)
            np.testing.assert_array_equal(target, y[i])


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((2, 8, 8))}, "no array y"),
        ({"x": np.zeros((2, 8, 8)), "y": np.zeros((3, 16, 16))}, "holds 3"),
        ({"x": np.zeros((2, 8, 8)), "y": np.zeros((2, 15, 16))}, "not 2x"),
        ({"x": np.zeros((2, 8, 8, 3)), "y": np.zeros((2, 16, 16))}, "shape"),
        ({"x": np.full((2, 8, 8), np.nan), "y": np.zeros((2, 16, 16))}, "NaN"),
        ({"x": np.zeros((2, 8, 8), np.complex64), "y": np.zeros((2, 16, 16))}, "complex"),
    ],
)
def test_bad_npz(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    _expect(lambda: read_npz_pairs(path), path, fragment)


def test_npz_that_is_not_an_archive(tmp_path):
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros((2, 8, 8)))
    _expect(lambda: read_npz_pairs(npy), npy, "not an .npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    _expect(lambda: read_npz_pairs(text), text, "not a readable .npz")


# === Bad files ===


def test_read_mrc_shapes_and_big_endian_priism_style(tmp_path, rng):
    image = _target(rng)
    assert read_mrc(_write_mrc(tmp_path / "one.mrc", image)).shape == (1, 2 * H, 2 * W)
    np.testing.assert_array_equal(read_widefield(tmp_path / "one.mrc"), image)
    # A big-endian file with neither "MAP " nor a machine stamp (as Priism writes): found by the valid mode.
    raw = _raw(rng)
    path = _write_mrc(tmp_path / "le.mrc", raw)
    header = np.frombuffer(path.read_bytes()[:1024], mrcfile.dtypes.HEADER_DTYPE.newbyteorder("<")).copy()
    header = header.astype(header.dtype.newbyteorder(">"))
    header["map"], header["machst"] = b"", 0
    (tmp_path / "be.mrc").write_bytes(header.tobytes() + raw.astype(">u2").tobytes())
    np.testing.assert_array_equal(read_mrc(tmp_path / "be.mrc"), raw)


def test_truncated_mrc(tmp_path, rng):
    path = _write_mrc(tmp_path / "cut.mrc", _raw(rng))
    path.write_bytes(path.read_bytes()[:-10])
    _expect(lambda: read_mrc(path), path, "truncated")


def test_complex_mrc_modes(tmp_path, rng):
    path = _write_mrc(tmp_path / "complex.mrc", _raw(rng).astype(np.complex64))
    _expect(lambda: read_mrc(path), path, "unsupported MRC mode 4")
    data = bytearray(_write_mrc(tmp_path / "mode3.mrc", _raw(rng)).read_bytes())
    data[12:16] = np.int32(3).astype("<i4").tobytes()
    (tmp_path / "mode3.mrc").write_bytes(bytes(data))
    _expect(lambda: read_mrc(tmp_path / "mode3.mrc"), tmp_path / "mode3.mrc", "unsupported MRC mode 3")


def test_not_mrc_files(tmp_path, rng):
    short = tmp_path / "short.mrc"
    short.write_text("hello")
    _expect(lambda: read_mrc(short), short, "not an MRC file")
    text = tmp_path / "text.mrc"
    text.write_text("not an MRC file, just text. " * 100)
    _expect(lambda: read_mrc(text), text, "not an MRC file")
    tiff = tmp_path / "tiff.mrc"
    tifffile.imwrite(tiff, _raw(rng, h=32, w=32))
    _expect(lambda: read_mrc(tiff), tiff, "MRC file")
    _expect(lambda: read_mrc(tmp_path / "nope.mrc"), tmp_path / "nope.mrc", "no such file")


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_mrc(tmp_path, rng):
    image = _target(rng)
    image[1, 2] = np.nan
    path = _write_mrc(tmp_path / "nan.mrc", image)
    _expect(lambda: read_mrc(path), path, "NaN")


def test_target_off_the_2x_grid(tmp_path, rng):
    raw = _write_mrc(tmp_path / "raw.mrc", _raw(rng))
    target = _write_mrc(tmp_path / "gt.mrc", _target(rng, h=2 * H - 1))
    pair = PairFiles("p", "S", "S/Cell_001", 1, raw, target, FRAMES)
    message = _expect(lambda: load_pair(pair), target, f"15 x 16 is not 2x the widefield 8 x 8 of {raw}")
    assert message.startswith(str(target))
    _expect(lambda: load_pair(PairFiles("p", "S", "c", 1, raw, raw, FRAMES)), raw, "expected one target")


def test_wrong_frame_counts(tmp_path, rng):
    seven = _write_mrc(tmp_path / "seven.mrc", _raw(rng, frames=7))
    _expect(lambda: read_widefield(seven), seven, "7 frame", "expected 9 raw SIM frames or one widefield image")
    tiff = tmp_path / "seven.tif"
    tifffile.imwrite(tiff, _raw(rng, frames=7))
    _expect(lambda: read_widefield(tiff), tiff, "7 frame")
    target = _write_mrc(tmp_path / "gt.mrc", _target(rng))
    _expect(lambda: load_pair(PairFiles("p", "S", "c", 1, seven, target, FRAMES)), seven, "7 frame")
    # load_pair wants exactly pair.frames, even 1 frame where 9 were promised.
    single = _write_mrc(tmp_path / "single.mrc", _raw(rng, frames=1)[0])
    _expect(lambda: load_pair(PairFiles("p", "S", "c", 1, single, target, FRAMES)), single, "1 frame")
    np.testing.assert_array_equal(read_widefield(seven, frames=7), mrcfile.read(seven).sum(axis=0))


def test_colour_widefield(tmp_path, rng):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    _expect(lambda: read_widefield(path), path, "colour")


# === Splitting ===


def test_split_by_cell_keeps_cells_whole_and_is_deterministic(tree):
    root, _ = tree
    pairs = find_pairs(root)
    train, val = split_by_cell(pairs, 0.34, seed=3)
    assert len({p.cell for p in val}) == 2 and len(train) + len(val) == len(pairs)
    assert not {p.cell for p in train} & {p.cell for p in val}
    assert split_by_cell(pairs, 0.34, seed=3) == (train, val)
    assert split_by_cell(pairs[::-1], 0.34, seed=3)[1] == val[::-1]  # input order does not matter
    assert {p.cell for p in split_by_cell(pairs, 0.9, seed=0)[0]}  # at least one cell trains
    assert split_by_cell(pairs, 0.0, seed=3) == (pairs, [])
    one_cell = [p for p in pairs if p.cell == "ER/Cell_001"]
    assert split_by_cell(one_cell, 0.5, seed=3) == (one_cell, [])
    with pytest.raises(InputError, match="validation_fraction"):
        split_by_cell(pairs, 1.0, seed=0)


# === Percentile normalisation ===


@pytest.mark.parametrize(("low", "high", "clip"), [(0.0, 100.0, True), (1.0, 99.8, False), (2.5, 97.3, True)])
@pytest.mark.parametrize("channels", [False, True])
def test_tf_matches_numpy(rng, low, high, clip, channels):
    shape = (2, 3, 8, 8, 2) if channels else (2, 3, 8, 8)
    batch = (rng.gamma(2.0, 300.0, shape) + 100.0).astype(np.float32)
    normalized, offset, scale = percentile_normalize_tf(batch, low, high, clip, channels=channels)
    image_axes = 3 if channels else 2
    assert offset.shape == shape[: -image_axes] + (1,) * image_axes
    for index in np.ndindex(shape[:-image_axes]):
        expected, (expected_offset, expected_scale) = percentile_normalize(batch[index], low, high, clip)
        np.testing.assert_allclose(normalized.numpy()[index], expected, atol=1e-5)
        np.testing.assert_allclose(float(offset.numpy()[index].squeeze()), expected_offset, rtol=1e-5)
        np.testing.assert_allclose(float(scale.numpy()[index].squeeze()), expected_scale, rtol=1e-5)


def test_inverse_clipping_and_dfcan_formula(rng):
    image = rng.normal(500.0, 80.0, (16, 16)).astype(np.float32)
    normalized, (offset, scale) = percentile_normalize(image, 1.0, 99.0, clip=False)
    np.testing.assert_allclose(normalized * scale + offset, image, rtol=1e-5)
    assert normalized.min() < 0.0 and normalized.max() > 1.0
    clipped, _ = percentile_normalize(image, 1.0, 99.0, clip=True)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    dfcan = (image - image.min()) / (image.max() - image.min() + 1e-7)
    np.testing.assert_allclose(percentile_normalize(image)[0], dfcan, atol=1e-6)
    tf_normalized, tf_offset, tf_scale = percentile_normalize_tf(image, 1.0, 99.0, clip=False)
    np.testing.assert_allclose((tf_normalized * tf_scale + tf_offset).numpy(), image, rtol=1e-5)


def test_constant_image_does_not_divide_by_zero():
    image = np.full((8, 8), 7.0, dtype=np.float32)
    normalized, (offset, scale) = percentile_normalize(image, 1.0, 99.8)
    assert np.all(normalized == 0.0) and scale > 0.0
    np.testing.assert_allclose(normalized * scale + offset, image)
    tf_normalized, _, tf_scale = percentile_normalize_tf(image[None], 1.0, 99.8)
    assert np.all(tf_normalized.numpy() == 0.0) and np.all(tf_scale.numpy() > 0.0)


def test_bad_percentiles():
    with pytest.raises(InputError, match="percentiles"):
        percentile_normalize(np.zeros((4, 4)), 50.0, 50.0)
