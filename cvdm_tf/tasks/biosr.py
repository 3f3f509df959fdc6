"""Super-resolution microscopy (the paper's BioSR benchmark, section 4.1): a SIM-like image on the 2x grid from a
widefield image.

    measurement m   widefield image [h, w, 1] (photon counts; a 9-frame raw SIM stack is summed on reading)
    condition y     percentile-normalised m, bicubic-upsampled to the SIM grid [2h, 2w, 1], in [-1, 1]
    target x        percentile-normalised SIM image [2h, 2w, 1], in [-1, 1]
    units           x -> the widefield's intensity units through its own percentiles p_low, p_high:
                    value = (x + 1) / 2 (p_high - p_low) + p_low

Normalisation is the field's (CSBDeep / DFCAN `prctile_norm`): (v - p_low) / (p_high - p_low), percentiles
`data.percentile_low` / `percentile_high` (DFCAN: 0 and 100), on whole images at inference and on every crop in
training, as DFCAN does. The condition is also an estimate of the target (a blurred one), so `model.mean =
"condition"` diffuses the residual around it, as the reference's `diff_inp` does.

Training data, by `data.source`:
    ""        simulated cells (the default, no download): fluorescence structures (`cvdm_tf.data.structures`:
              microtubules, F-actin, clathrin-coated pits, ER) on the SIM grid, imaged by `cvdm_tf.physics.optics`
              with the widefield OTF (circular pupil NA, emission wavelength) and 2x2 binning, the target with
              twice the widefield cut-off; Poisson-Gaussian noise at a photon level drawn per crop, log-uniform in
              [photons_min, photons_max] (the "SNR levels");
    a folder  measured pairs: BioSR as published (`Cell_NNN/RawSIMData_level_LL.mrc` + `SIM_gt.mrc`, the ER
              variant), or `wf/NAME.tif` + `gt/NAME.tif`; read from disk per crop (`FileBank`), split by cell;
    a .npz    the reference code's arrays `x`, `y`.

Eval baselines: bicubic upsampling and Richardson-Lucy deconvolution with the task's PSF (its iteration count
tuned on the truth: an oracle). Scores (as the paper's Table 1): prediction and truth each percentile-normalised
to [0, 1] (0 / 100, as DFCAN's metrics), then MAE, PSNR, SSIM, MS-SSIM; and the resolution in nm of the
prediction by decorrelation analysis.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from cvdm_tf import io, metrics
from cvdm_tf.config import check_choice, check_non_negative, check_positive
from cvdm_tf.data import biosr_files, sources, structures
from cvdm_tf.data.pipeline import FileBank, InMemoryBank
from cvdm_tf.errors import InputError
from cvdm_tf.physics import optics
from cvdm_tf.tasks import TASK_OPTIONS
from cvdm_tf.tasks.base import Baseline, Case, Task

NOISE_MODELS = ("poisson-gaussian", "none")
SIMULATION_MARGIN = 16  # SIM px simulated beyond each cell and cut off: the FFT blur is periodic
# The incoherent OTF of a circular pupil, (2 / pi) (acos v - v sqrt(1 - v^2)) at v = f / cut-off, is 10% here.
MTF10_OF_CUTOFF = 0.8054
EVAL_SIMULATION_SEED = 1234  # eval's simulated measurements of structure images; training cells use `train.seed`


@dataclass(frozen=True)
class DataConfig:
    """The [data] table of the BioSR task: data source, optics of the simulator, noise, normalisation."""

    source: str = ""  # "" = simulated cells; a BioSR folder, a wf/ + gt/ folder, or a .npz of x / y
    structures: str = ""  # comma-separated structure names to use ("" = all): ccps, er, microtubules, f-actin
    levels: str = ""  # comma-separated BioSR SNR levels to use ("" = all)
    image_size: int = 64  # training crop on the SIM (output) grid, px
    pixel_size_um: float = 0.0313  # SIM grid; the widefield grid is twice as coarse (62.6 nm)
    na: float = 1.3
    wavelength_um: float = 0.525  # emission
    cells: int = 48  # simulated cells (source = "")
    cell_size: int = 256  # SIM px per simulated cell
    noise: str = "poisson-gaussian"
    photons_min: float = 20.0  # expected photons per unit fluorophore density, log-uniform per crop
    photons_max: float = 500.0
    read_noise: float = 1.0  # camera read noise, photons
    background: float = 0.02  # out-of-focus background per pixel, as a fraction of the mean widefield signal
    percentile_low: float = 0.0
    percentile_high: float = 100.0
    augment: bool = True

    def __post_init__(self):
        check_choice("data.noise", self.noise, NOISE_MODELS)
        for name in ("image_size", "cells", "cell_size"):
            check_positive(f"data.{name}", getattr(self, name))
        for name in ("pixel_size_um", "na", "wavelength_um", "photons_min", "photons_max"):
            if not getattr(self, name) > 0:
                raise InputError(f"data.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("read_noise", "background"):
            check_non_negative(f"data.{name}", getattr(self, name))
        if self.photons_min > self.photons_max:
            raise InputError(f"data.photons_min: {self.photons_min} is above data.photons_max {self.photons_max}")
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise InputError(f"data.percentile_low/high: need 0 <= low < high <= 100, got {self.percentile_low}, "
                             f"{self.percentile_high}")
        if self.image_size % 2:
            raise InputError(f"data.image_size: {self.image_size} must be even (the widefield grid is 2x coarser)")
        for kind in self.structure_list:
            check_choice("data.structures", kind, structures.STRUCTURES)
        try:
            self.level_list
        except ValueError:
            raise InputError(f"data.levels: {self.levels!r} is not a comma-separated list of integers") from None

    @property
    def structure_list(self) -> tuple:
        return tuple(s.strip().lower() for s in self.structures.split(",") if s.strip())

    @property
    def level_list(self) -> tuple:
        return tuple(int(s) for s in self.levels.split(",") if s.strip())


class BioSRTask(Task):
    """Super-resolution microscopy: widefield [h, w, 1] -> SIM-like image [2h, 2w, 1].

    Args:
        data: DataConfig.
    """

    name = "biosr"
    description = "super-resolution microscopy: a SIM-like image on the 2x grid from a widefield image"
    DataConfig = DataConfig
    scale = 2
    target_unit = ""
    target_name = "intensity"
    package_tags = ("super-resolution", "fluorescence-light-microscopy", "structured-illumination")
    measurement_names = ["widefield"]
    noise_models = NOISE_MODELS
    options = TASK_OPTIONS["biosr"]
    crop_divisors = {"widefield": 2, "target": 1}
    input_suffixes = (".tif", ".tiff", ".mrc", ".png", ".npy")
    measurement_channels = 1
    condition_channels = 1
    condition_has_estimate = True
    score_columns = (("mae", "MAE", ".4f"), ("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".4f"),
                     ("ms_ssim", "MS-SSIM", ".4f"), ("resolution_nm", "resolution (nm)", ".0f"),
                     ("spectral_db", "spectral error (dB)", ".2f"))

    @property
    def output_pixel_size_um(self) -> float:
        return self.data.pixel_size_um

    def describe_measurement(self) -> str:
        return "a widefield image, or a 9-frame raw SIM stack"

    # --- units ---
    def _normalize(self, image):
        """[..., H, W, 1] -> (values in [-1, 1], offset, scale) with image = values * scale + offset."""
        d = self.data
        normalized, low, span = biosr_files.percentile_normalize_tf(image, d.percentile_low, d.percentile_high,
                                                                    clip=True, channels=True)
        return 2.0 * normalized - 1.0, low + span / 2.0, span / 2.0

    def condition(self, measurement):
        """Widefield [..., h, w, 1] -> percentile-normalised, bicubic-upsampled to [..., 2h, 2w, 1]."""
        values, _, _ = self._normalize(measurement)
        return upsample(values, self.scale)

    def units(self, measurement):
        _, offset, scale = self._normalize(measurement)
        return offset, scale

    # --- physics ---
    def simulate(self, structure, photons, seed, noise=None):
        """Structure [..., H, W] on the SIM grid -> (widefield counts [..., H/2, W/2], SIM image [..., H, W])."""
        d = self.data
        wide = optics.widefield(structure, d.pixel_size_um, d.na, d.wavelength_um)
        target = optics.sim_image(structure, d.pixel_size_um, d.na, d.wavelength_um)
        return self.add_noise(wide, photons, seed, noise), target

    def add_noise(self, widefield, photons, seed, noise=None):
        """Photon counts of a noise-free widefield image: background, then Poisson-Gaussian (or none)."""
        d = self.data
        signal = widefield + d.background * tf.reduce_mean(widefield, axis=[-2, -1], keepdims=True)
        if (noise or d.noise) == "none":
            return signal * photons
        return optics.poisson_gaussian(signal, photons, d.read_noise, seed)

    def _photons(self, seed):
        d = self.data
        u = tf.random.stateless_uniform([], seed=seed)
        return tf.exp(math.log(d.photons_min) + u * (math.log(d.photons_max) - math.log(d.photons_min)))

    # --- training pairs ---
    def pair(self, crop, seed):
        """(y, x) from {"widefield": [S/2, S/2, 1], "target": [S, S, 1]}; a simulated (noise-free) widefield gets
        its noise here, at a photon level drawn per crop."""
        wide = crop["widefield"]
        if not self.data.source:  # simulated cells are stored noise-free: a new noise draw for every crop
            photons = self._photons(tf.random.experimental.stateless_fold_in(seed, 0))
            wide = self.add_noise(wide[..., 0], photons, tf.random.experimental.stateless_fold_in(seed, 1))[..., None]
        target, _, _ = self._normalize(crop["target"])
        return self.condition(wide), target

    def training_banks(self, validation_fraction, seed, min_size, warn=None):
        d = self.data
        if not d.source:
            cells = simulated_cells(self, d.cells, d.cell_size, seed)
            train, val = sources.split_by_image(cells, validation_fraction, seed)
            bank = lambda items: InMemoryBank([example for _, example in items], self.crop_divisors)  # noqa: E731
            return (bank(train), bank(val) if val else None,
                    f"{len(train)} training + {len(val)} validation simulated cells ({d.cell_size} px)")
        source = Path(d.source)
        if source.is_file() and source.suffix.lower() == ".npz":
            pairs = biosr_files.read_npz_pairs(source, scale=self.scale)
            examples = [(name, {"widefield": wf[..., None], "target": gt[..., None]}) for name, wf, gt in pairs]
            examples = [item for item in examples if min(item[1]["target"].shape[:2]) >= min_size]
            if not examples:
                raise InputError(f"{source}: no pair is at least {min_size} px on the SIM grid (data.image_size)")
            train, val = sources.split_by_image(examples, validation_fraction, seed)
            bank = lambda items: InMemoryBank([example for _, example in items], self.crop_divisors)  # noqa: E731
            return bank(train), bank(val) if val else None, f"{len(train)} + {len(val)} pairs of {source}"
        pairs = biosr_files.find_pairs(source, d.structure_list or None, d.level_list or None)
        train, val = biosr_files.split_by_cell(pairs, validation_fraction, seed)
        cells = lambda items: len({pair.cell for pair in items})  # noqa: E731
        return (self._file_bank(train, min_size, warn), self._file_bank(val, min_size, warn) if val else None,
                f"{len(train)} pairs of {cells(train)} cells + {len(val)} pairs of {cells(val)} validation cells")

    def _file_bank(self, pairs, min_size, warn):
        sizes = [biosr_files.pair_shape(pair, self.scale) for pair in pairs]
        usable = [(pair, size) for pair, size in zip(pairs, sizes) if min(size) >= min_size]
        if warn:
            for pair, size in zip(pairs, sizes):
                if min(size) < min_size:
                    warn(f"skipping {pair.name} ({size[0]} x {size[1]}): smaller than the {min_size} px crop")
        if not usable:
            raise InputError(f"{self.data.source}: no pair is at least {min_size} px on the SIM grid")

        def load(index):
            widefield, target = biosr_files.load_pair(usable[index][0], scale=self.scale)
            return {"widefield": widefield[..., None], "target": target[..., None]}

        return FileBank([size for _, size in usable], load, {"widefield": 1, "target": 1}, self.crop_divisors)

    # --- files ---
    # A widefield pixel size in a file's metadata may differ from the model's by this much (relative): the PSF
    # in pixels, which the model has learned, is then within this of the one it was trained on.
    PIXEL_SIZE_TOLERANCE = 0.05

    def with_stated_pixel_size(self, pixel_size_um, source):
        """The outputs get half the stated widefield pixel; one that differs from the model's by more than
        PIXEL_SIZE_TOLERANCE is refused, naming both: the model knows its PSF in pixels only."""
        trained = self.data.pixel_size_um * self.scale
        if abs(pixel_size_um / trained - 1.0) > self.PIXEL_SIZE_TOLERANCE:
            raise InputError(f"{source}: widefield pixel size {pixel_size_um:g} um in its metadata; the model was "
                             f"trained on {trained:g} um pixels (resample the image to that size, or train on such "
                             "data)")
        return type(self)(dataclasses.replace(self.data, pixel_size_um=pixel_size_um / self.scale))

    def read_measurements(self, path, message=None):
        return [biosr_files.read_widefield(path)[..., None]]

    def is_truth_file(self, path, stems):
        # `cvdm-tf simulate` writes DIR/wf/NAME.tif and DIR/gt/NAME.tif; BioSR keeps SIM_gt / GTSIM files.
        return path.parent.name.lower() in ("gt", "gtsim") or path.stem.lower().startswith("sim_gt")

    def simulate_files(self, input_path, out_dir, noise, seed):
        """DIR/wf/NAME.tif (widefield photon counts, 2x coarser) and DIR/gt/NAME.tif (the SIM-like target) per
        structure image (its values taken as fluorophore density, scaled to max 1), the layout `--data` reads."""
        cases = self._structure_cases(input_path, noise, seed)
        out_dir = Path(out_dir)
        wide_px = self.data.pixel_size_um * self.scale
        for case in cases:
            io.write_tiff(out_dir / "wf" / f"{case.name}.tif", case.measurement, pixel_size_um=wide_px)
            io.write_tiff(out_dir / "gt" / f"{case.name}.tif", case.truth, pixel_size_um=self.data.pixel_size_um)
        return len(cases)

    def _structure_cases(self, path, noise, seed):
        photons = math.sqrt(self.data.photons_min * self.data.photons_max)  # the middle of the training range
        cases = []
        for index, (name, image, dtype) in enumerate(sources.iter_source_images(path, with_dtype=True)):
            density = sources.to_grayscale(image)[..., 0]
            density = density / max(float(density.max()), 1e-12)
            h, w = density.shape[0] // 2 * 2, density.shape[1] // 2 * 2
            wide, target = self.simulate(tf.constant(density[:h, :w]), photons,
                                         tf.constant([seed, index], tf.int64), noise)
            cases.append(Case(name, wide.numpy()[..., None].astype(np.float32), target.numpy().astype(np.float32)))
        return cases

    # --- evaluation ---
    def eval_cases(self, data_path, noise, seed):  # no reader options
        """Measured pairs (a BioSR folder, wf/ + gt/ TIFFs, an .npz), or structure images to simulate from."""
        path = Path(data_path)
        if not path.exists():
            raise InputError(f"{data_path}: no such file or folder")
        if path.is_file() and path.suffix.lower() == ".npz":
            return [Case(name, wf[..., None], gt) for name, wf, gt in biosr_files.read_npz_pairs(path, self.scale)]
        if path.is_dir() and biosr_files.has_pairs(path):
            d = self.data
            cases = []
            for pair in biosr_files.find_pairs(path, d.structure_list or None, d.level_list or None):
                widefield, target = biosr_files.load_pair(pair, scale=self.scale)
                cases.append(Case(pair.name, widefield[..., None], target, group=pair.structure))
            return cases
        return self._structure_cases(path, noise, seed)

    def baselines(self):
        d = self.data
        return {"bicubic": lambda: BicubicBaseline(),
                "richardson-lucy": lambda **options: RichardsonLucyBaseline(d, **options)}

    def score(self, estimate, truth):
        """Each image percentile-normalised to [0, 1] (0 / 100, DFCAN's metrics), then MAE, PSNR, SSIM, MS-SSIM
        (data range 1) and the distance of the power spectra up to the target's band limit (dB,
        `metrics.spectral_error_db`: how much of the truth's texture a smooth estimate lacks); the resolution (nm)
        of the estimate by decorrelation analysis."""
        a, b = self.centre(estimate, truth)
        return {"mae": metrics.mae(a, b), "psnr": metrics.psnr(a, b, 1.0), "ssim": metrics.ssim(a, b, 1.0),
                "ms_ssim": metrics.ms_ssim(a, b, 1.0),
                "spectral_db": metrics.spectral_error_db(a, b, high=self.target_band_limit),
                "resolution_nm": metrics.decorrelation_resolution(np.asarray(estimate, np.float64),
                                                                  self.data.pixel_size_um * 1000.0)}

    @property
    def target_band_limit(self) -> float:
        """Where the SIM-like target's OTF (a circular pupil of 2 NA, cut-off 2 (2 NA) / lam) falls to 10% (its
        MTF10, the usual resolution criterion; at 0.80 of the cut-off), as a fraction of the SIM grid's Nyquist
        frequency: 0.50 for the default optics. Above it the truth holds little signal, and spectra compared
        there compare noise floors."""
        cutoff = 4.0 * self.data.na / self.data.wavelength_um * 2.0 * self.data.pixel_size_um
        return min(1.0, MTF10_OF_CUTOFF * cutoff)

    def centre(self, estimate, truth):
        normalize = lambda v: biosr_files.percentile_normalize(np.asarray(v, np.float64), 0.0, 100.0)[0]  # noqa
        return normalize(estimate), normalize(truth)

    def centre_spread(self, std, estimate):
        """`centre` divides the estimate by its percentile range: so does its std."""
        _, (_, scale) = biosr_files.percentile_normalize(np.asarray(estimate, np.float64), 0.0, 100.0)
        return np.asarray(std, np.float64) / scale


class BicubicBaseline(Baseline):
    name = "bicubic"
    description = "bicubic 2x upsampling of the widefield image"

    def __call__(self, measurement):
        return optics.bicubic_up(measurement[..., 0], 2)


class RichardsonLucyBaseline(Baseline):
    """Bicubic upsampling, then Richardson-Lucy with the widefield PSF; iterations tuned on the truth (oracle)
    unless given."""

    name = "richardson-lucy"
    description = "Richardson-Lucy deconvolution with the task's PSF (scikit-image), iterations tuned on the truth"
    CANDIDATES = (5, 10, 20, 40, 80)

    def __init__(self, data, iterations: int | None = None):
        self.data = data
        self.iterations = iterations

    def _run(self, measurement, iterations):
        d = self.data
        return optics.richardson_lucy_sr(measurement[..., 0], d.pixel_size_um, d.na, d.wavelength_um, iterations)

    def tune(self, cases):
        if self.iterations is None:
            def error(n):
                return np.mean([metrics.mae(*_unit(self._run(case.measurement, n), case.truth)) for case in cases])

            self.iterations = min(self.CANDIDATES, key=error)
        return {"rl_iterations": self.iterations}

    def __call__(self, measurement):
        return self._run(measurement, self.iterations)


def _unit(a, b):
    return (biosr_files.percentile_normalize(np.asarray(a, np.float64))[0],
            biosr_files.percentile_normalize(np.asarray(b, np.float64))[0])


def upsample(image, factor: int):
    """Bicubic upsampling [..., h, w, C] -> [..., factor h, factor w, C] in TensorFlow (half-pixel centres, so
    a coarse pixel covers exactly the factor x factor fine pixels it was binned from)."""
    shape = tf.shape(image)
    flat = tf.reshape(image, tf.concat([[-1], shape[-3:]], axis=0))
    up = tf.image.resize(flat, shape[-3:-1] * factor, method="bicubic")
    return tf.reshape(up, tf.concat([shape[:-3], shape[-3:-1] * factor, shape[-1:]], axis=0))


def simulated_cells(task: BioSRTask, count: int, size: int, seed: int) -> list[tuple[str, dict]]:
    """`count` simulated cells: (name, {"widefield": noise-free [size/2, size/2, 1], "target": [size, size, 1]}),
    structures drawn from `data.structures` (all by default), a pure function of `seed`."""
    d = task.data
    kinds = d.structure_list or structures.STRUCTURES
    rng = np.random.default_rng([seed, 7])
    margin = SIMULATION_MARGIN
    cells = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        density = structures.structure(kind, size + 2 * margin, rng, pixel_size_um=d.pixel_size_um)
        wide = optics.widefield(tf.constant(density), d.pixel_size_um, d.na, d.wavelength_um).numpy()
        target = optics.sim_image(tf.constant(density), d.pixel_size_um, d.na, d.wavelength_um).numpy()
        inner = slice(margin, margin + size)
        half = slice(margin // 2, (margin + size) // 2)
        cells.append((f"{kind}_{index:03d}", {"widefield": wide[half, half, None].astype(np.float32),
                                              "target": target[inner, inner, None].astype(np.float32)}))
    return cells
