"""OME-Zarr fields (`cvdm_tf.zarr_io`, `cvdm-tf infer --input FIELD.zarr`): read lazily with their pixel size,
reconstructed block by block, blended without seams (and QPI's per-block phase constants reconciled), written
as OME-Zarr images at the output pixel size."""

import numpy as np
import pytest
import zarr

from cvdm_tf import zarr_io
from cvdm_tf.errors import InputError
from cvdm_tf.tasks.qpi import DataConfig, QPITask


def _write_field(path, data, pixel_size_um=None, unit="micrometer"):
    """An OME-Zarr image (NGFF 0.4) written with zarr itself: axes c, y, x (or y, x)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=np.asarray(data, np.float32), chunks=(1, 32, 32) if data.ndim == 3 else (32, 32))
    names = ["c", "y", "x"] if data.ndim == 3 else ["y", "x"]
    axes = [{"name": n, "type": "channel" if n == "c" else "space", **({"unit": unit} if n != "c" else {})}
            for n in names]
    scale = [1.0] * (data.ndim - 2) + [pixel_size_um or 1.0] * 2
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    return path


def _scale(path):
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)["multiscales"][0]
    return attrs["datasets"][0]["coordinateTransformations"][0]["scale"], [a.get("unit") for a in attrs["axes"]]


def test_open_field_reads_axes_channels_and_the_pixel_size_in_micrometres(tmp_path):
    pair = np.random.default_rng(0).random((2, 40, 36))
    array, pixel = zarr_io.open_field(_write_field(tmp_path / "f.zarr", pair, 160.0, unit="nanometer"), 2)
    assert array.shape == (2, 40, 36) and pixel == pytest.approx(0.16)
    np.testing.assert_array_equal(np.asarray(array[:, 3:5, 4:6]), pair[:, 3:5, 4:6].astype(np.float32))
    with pytest.raises(InputError, match="has 2 channel\\(s\\), the model needs 1"):
        zarr_io.open_field(tmp_path / "f.zarr", 1)
    (tmp_path / "plain.zarr").mkdir()
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(InputError, match="plain.zarr: no OME-Zarr multiscales image"):
        zarr_io.open_field(tmp_path / "plain.zarr", 2)


@pytest.mark.parametrize("offset_free", [False, True])
def test_blocks_blend_to_the_field_and_qpi_constants_are_reconciled(tmp_path, monkeypatch, offset_free):
    """A stand-in for `reconstruct` that returns the block itself (plus, for an offset-free task, a random
    constant per block, as a QPI phase is known per block only up to one): the blended output is the field
    (plus one constant), whatever the block grid, so the weights and the alignment are right."""
    import cvdm_tf.inference

    rng = np.random.default_rng(1)
    field = rng.random((2, 100, 90)).astype(np.float32)

    def fake(model, task, raw, seed=0, **_):
        value = raw[..., :1] + (rng.normal() * 5.0 if offset_free else 0.0)
        return {"mean": value, "std": raw[..., 1:2], "schedule": raw[..., :1] * 2}

    monkeypatch.setattr(cvdm_tf.inference, "reconstruct", fake)
    task = QPITask(DataConfig())
    if not offset_free:
        monkeypatch.setattr(QPITask, "offset_free_outputs", ())
    paths = {key: tmp_path / f"f_{key}.ome.zarr" for key in zarr_io.OUTPUTS}
    done = []
    outputs = zarr_io.reconstruct_field(None, task, field, paths, 2, 2, "ddpm", 0, 64, 1, None, block=40,
                                        overlap=12, pixel_size_um=0.21, progress=lambda d, t: done.append((d, t)))
    assert done[-1] == (12, 12)  # 4 x 3 blocks of 40 px
    mean = np.asarray(zarr.open_group(str(paths["mean"]), mode="r")["0"])
    shift = float(np.mean(mean - field[0])) if offset_free else 0.0
    np.testing.assert_allclose(mean, field[0] + shift, atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["std"][:]), field[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(outputs["schedule"][:]), 2 * field[0], atol=1e-5)
    scale, units = _scale(paths["mean"])
    assert scale == pytest.approx([0.21, 0.21]) and units == ["micrometer", "micrometer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no weights left


@pytest.mark.slow
def test_infer_reconstructs_an_ome_zarr_field_at_its_pixel_size(tiny_run, tmp_path):
    """`infer_paths` on an OME-Zarr QPI field that fits in one block gives what `reconstruct` gives for the whole
    array (same seed and sampler), as OME-Zarr images at the field's pixel size; existing outputs are kept."""
    from cvdm_tf.inference import infer_paths, reconstruct
    from cvdm_tf.runs import load_run
    from cvdm_tf.sampler import sampler_for

    config, task, model = load_run(tiny_run)
    other = task.with_physics(pixel_size_um=0.16)
    field = np.stack([other.measure(np.zeros((48, 40), np.float32) + 0.0)[..., i] for i in range(2)])
    field = field + np.random.default_rng(2).normal(0, 0.01, field.shape).astype(np.float32)
    path = _write_field(tmp_path / "cell.ome.zarr", field, 0.16)
    report = infer_paths(tiny_run, path, tmp_path / "out", samples=2, steps=3, seed=5)
    assert report.ok and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cell_mean.ome.zarr", "cell_schedule.ome.zarr", "cell_std.ome.zarr"]
    mean = np.asarray(zarr.open_group(str(tmp_path / "out" / "cell_mean.ome.zarr"), mode="r")["0"])
    expected = reconstruct(model, other, np.moveaxis(field, 0, -1), samples=2, steps=3,
                           method=config.sampler.method, seed=5, sampler=sampler_for(model, config.sampler))
    np.testing.assert_allclose(mean, expected["mean"][..., 0], atol=1e-5)
    assert _scale(tmp_path / "out" / "cell_mean.ome.zarr")[0] == pytest.approx([0.16, 0.16])
    with pytest.raises(InputError, match="cell_mean.ome.zarr: exists"):
        infer_paths(tiny_run, path, tmp_path / "out", samples=2, steps=3)
