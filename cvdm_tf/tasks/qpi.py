"""Quantitative phase imaging: the phase of a thin object from two defocused intensity images (cvdm-math.md
section 6; the paper's section 4.2).

A training pair, in order (`pair`):
    1. the pair's microscope (cvdm_tf.physics.microscope): drawn from the training range (wavelength, pixel size
       at the sample, Fresnel number F = lam dz / dx^2), or the one fixed microscope;
    2. phase phi in [0, phase_max] radians (the target) from a ground-truth image: a field of
       CAMERA_FIELD x the crop (`crop_boundary = "camera"`) or the crop itself, resampled to the pair's pixel
       size;
    3. the 2-shot measurement (I(-dz), I(+dz)) of the thin object exp(i phi) by Fresnel propagation of that
       field (periodic; or of its mirror extension with `crop_boundary = "mirror"`), then, for a camera frame, its
       centre: a frame whose edges cut through objects and receive light from outside, as a camera's do;
    4. noise: `paper` (Gaussian with mean and std lam_n, lam_n ~ U(0, noise_max) per pair), `poisson` (photon
       counts at `photons_per_pixel` plus Gaussian read noise), or `none`;
    5. normalisation: condition y = (I / mean(I) - 1) * CONDITION_GAIN (the pair divided by its own mean
       intensity, which removes the illumination level of a real microscope but keeps the contrast, the thing that
       encodes the phase, and is the same for a 64 px crop and a 2048 px image); optional constant channels (the
       noise level, the Fresnel number, periodic-or-frame); with `tie_channel`, the last channel holds the TIE
       phase in target units, solved with the pair's own microscope (a camera frame: `tie_solver`, the frame
       weight added; a periodic field: FFT); target x = 2 (phi - mean(phi)) / phase_max.

A measurement's physics is the data config's microscope (`wavelength_um`, `pixel_size_um`, `defocus_um`), which
`with_physics` replaces per measurement (flags, file metadata) and `check_physics` holds to the training range;
`boundary` says whether it is a camera frame or a periodic field.

After sampling (never in training), each sample can be refined against its own pair (`data_consistency`:
`refine`, cvdm_tf.physics.consistency).

The target is offset-free: intensities determine the phase only up to a constant (TIE has the same gauge), so
asking a network for the absolute offset of a crop would ask for something the measurement does not contain.
Reconstructions are zero-mean phase maps in radians; compare them offset-free (cvdm_tf.metrics.offset_free).
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
from cvdm_tf.data import sources
from cvdm_tf.data.phantoms import cell_phantom
from cvdm_tf.data.pipeline import InMemoryBank
from cvdm_tf.errors import InputError
from cvdm_tf.physics.fresnel import two_shot_intensities
from cvdm_tf.physics import through_focus
from cvdm_tf.physics.consistency import project
from cvdm_tf.physics.microscope import Microscope, MicroscopeRange
from cvdm_tf.physics.noise_estimate import immerkaer_sigma
from cvdm_tf.physics.tie import (frame_regularization, noise_adaptive_regularization, tie_dct, tie_dirichlet, tie_fft,
                                 tie_padded, tie_us, tune_regularization)
from cvdm_tf.tasks import TASK_OPTIONS
from cvdm_tf.tasks.base import Baseline, Case, Task, stated_pixel_size_um

# Intensity contrast of the QPI pairs is a few percent to tens of percent; this gain brings it to order one.
CONDITION_GAIN = 4.0
TRAINING_PHANTOM_SEED = 2024  # the benchmarks test on phantoms drawn with seed 1234
NOISE_MODELS = ("paper", "poisson", "none")
TIE_WEIGHTS = ("fixed", "noise")
BOUNDARIES = ("camera", "periodic")
TIE_SOLVERS = {"fft": tie_fft, "dct": tie_dct, "pad": tie_padded}
# The noise channel holds NOISE_GAIN * sigma: the paper's noise (sigma <= 0.17) then spans [0, ~1.7].
NOISE_GAIN = 10.0
# The Fresnel-number channel holds log2(F / FRESNEL_REFERENCE) / 2: [-1, 1] for F in 4 .. 64.
FRESNEL_REFERENCE = 16.0
# Held out of the default training images by name, for the camera-crop benchmark (benchmarks/qpi_vs_tie.py).
EVAL_IMAGES = ("astronaut", "camera", "cell", "coins")
# A camera frame is simulated as the centre of a field this many times wider (crop_boundary = "camera").
CAMERA_FIELD = 2


@dataclass(frozen=True)
class DataConfig:
    """Where training images come from and the forward physics (cvdm-math.md section 6).

    `wavelength_um`, `pixel_size_um` and `defocus_um` are the microscope of a measurement: the default one, which
    `cvdm-tf infer --wavelength --pixel-size --defocus` (or a file's metadata) replaces. The `*_min` / `*_max`
    keys are the range training pairs are drawn from (cvdm_tf.physics.microscope); 0 pins them to the microscope
    above, which is then the only one the model knows.
    """

    source: str = ""  # "" = the images embedded in scikit-image (less EVAL_IMAGES); else a folder, image or stack
    image_size: int = 64
    wavelength_um: float = 0.521
    pixel_size_um: float = 0.21
    defocus_um: float = 1.0
    wavelength_min_um: float = 0.0
    wavelength_max_um: float = 0.0
    pixel_size_min_um: float = 0.0
    pixel_size_max_um: float = 0.0
    fresnel_min: float = 0.0  # F = wavelength * defocus / pixel_size^2, log-uniform; defocus = F dx^2 / lam
    fresnel_max: float = 0.0
    phase_max: float = 3.5
    # "image": scale phase over the whole source image, then crop (keeps the physical phase gradients of the
    # full image); "crop": scale every crop to [0, phase_max] (the reference's choice).
    phase_scaling: str = "image"
    # Absorbing objects: amplitude 1 - absorption * phi / phase_max (0 = a pure phase object, the paper's).
    absorption: float = 0.0
    noise: str = "paper"
    noise_max: float = 0.2  # paper noise: lam_n ~ U(0, noise_max) per pair
    # Training pairs left noise-free (only in training: eval and the benchmarks simulate the noise they are told).
    noise_free_fraction: float = 0.0
    photons_per_pixel: float = 1000.0  # poisson noise
    read_noise: float = 2.0  # poisson noise: Gaussian read noise, in photons
    augment: bool = True
    # Give the network the classical TIE phase as an extra condition channel (physics-informed
    # conditioning; with model.mean = "condition" the diffusion learns the correction to TIE).
    tie_channel: bool = False
    # Its solver for a camera frame (`boundary = "camera"`): "pad" (free space: the frame's source zero-padded),
    # "dct" (Neumann) or "fft"; a periodic field always gets "fft", exact there.
    tie_solver: str = "fft"
    tie_regularization: float = 1e-6
    # That estimate's Tikhonov weight: "fixed" (tie_regularization) or "noise" (each image's own, from the noise
    # level estimated on its intensities: physics.tie.noise_adaptive_regularization).
    tie_weight: str = "fixed"
    # Camera frames: plus tie_frame * (2 pi / min(H, W))^4 (physics.tie.frame_regularization), which damps the
    # large scales a frame leaves undetermined (0 = none).
    tie_frame: float = 0.0
    # The estimated noise level (Immerkaer's, of I / mean(I)) as one more condition channel, constant over the image.
    noise_channel: bool = False
    # The Fresnel number of the pair's microscope as one more condition channel, constant over the image.
    fresnel_channel: bool = False
    # Whether the measurement is a periodic field (1) or a camera frame (0), as one more condition channel.
    boundary_channel: bool = False
    # Synthetic cell phantoms (cvdm_tf.data.phantoms, 256 px) added to the training images.
    phantoms: int = 0
    # How a training crop is simulated: "periodic" (the FFT's wrap-around: the crop's opposite edges meet with a
    # phase jump no microscope sees), "mirror" (the crop continues as its mirror image) or "camera" (the crop is
    # the centre of a field CAMERA_FIELD times wider, simulated whole: its edges are as ambiguous as a camera
    # frame's, cut through objects whose light partly comes from outside). Eval and simulate: `camera_crop`.
    crop_boundary: str = "periodic"
    # crop_boundary = "camera": this share of training pairs are periodic fields instead (the crop simulated on
    # its own, periodically), so that one model serves both kinds of measurement (`boundary`).
    periodic_fraction: float = 0.0
    # What a measurement is: "camera" (a frame of a wider field, every real acquisition) or "periodic" (a field
    # that repeats, as a periodic simulation makes it). It picks the TIE channel's solver (periodic: FFT; camera:
    # tie_solver and the frame weight) and the data-consistency step's boundaries; `--boundary` per call.
    boundary: str = "periodic"
    # `cvdm-tf simulate` / `eval`: 0 simulates each image whole (periodic); N > 0 keeps the central N x N px of
    # the simulated image (and its truth), a camera frame of a wider field.
    camera_crop: int = 0
    # After sampling (`infer`, `eval`, napari, the benchmarks): this many data-consistency steps per sample
    # (physics.consistency: the sample made to reproduce its measurement through Fresnel propagation, with TIE as
    # the pseudo-inverse), 0 = off. Their TIE weight is the noise-adaptive one times consistency_weight: larger
    # trusts the measurement only in frequencies far above its noise.
    data_consistency: int = 0
    consistency_weight: float = 1e3

    def __post_init__(self):
        check_choice("data.noise", self.noise, NOISE_MODELS)
        check_choice("data.phase_scaling", self.phase_scaling, ("image", "crop"))
        check_choice("data.tie_weight", self.tie_weight, TIE_WEIGHTS)
        check_choice("data.tie_solver", self.tie_solver, tuple(TIE_SOLVERS))
        check_choice("data.crop_boundary", self.crop_boundary, ("periodic", "mirror", "camera"))
        check_choice("data.boundary", self.boundary, BOUNDARIES)
        check_positive("data.image_size", self.image_size)
        for name in ("wavelength_um", "pixel_size_um", "defocus_um", "phase_max", "photons_per_pixel"):
            if not getattr(self, name) > 0:
                raise InputError(f"data.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("noise_max", "read_noise", "tie_regularization", "tie_frame", "camera_crop"):
            check_non_negative(f"data.{name}", getattr(self, name))
        for name in ("noise_free_fraction", "periodic_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"data.{name}: must be in [0, 1], got {getattr(self, name)}")
        check_non_negative("data.data_consistency", self.data_consistency)
        check_positive("data.consistency_weight", self.consistency_weight)
        if not 0 <= self.absorption < 1:
            raise InputError(f"data.absorption: must be in [0, 1), got {self.absorption}")
        # Unset ranges (0) are pinned to the microscope now, so that a later `replace` of the microscope (a
        # measurement's own physics) keeps the range the model was trained on.
        fixed = Microscope(self.wavelength_um, self.pixel_size_um, self.defocus_um)
        for low, high, value in (("wavelength_min_um", "wavelength_max_um", fixed.wavelength_um),
                                 ("pixel_size_min_um", "pixel_size_max_um", fixed.pixel_size_um),
                                 ("fresnel_min", "fresnel_max", fixed.fresnel_number)):
            if getattr(self, low) == 0 and getattr(self, high) == 0:
                object.__setattr__(self, low, float(value))
                object.__setattr__(self, high, float(value))
            if not 0 < getattr(self, low) <= getattr(self, high):
                raise InputError(f"data.{low}, data.{high}: need 0 < min <= max, got {getattr(self, low)}, "
                                 f"{getattr(self, high)}")

    @property
    def microscope(self) -> Microscope:
        """The measurement's physics."""
        return Microscope(self.wavelength_um, self.pixel_size_um, self.defocus_um)

    @property
    def training_range(self) -> MicroscopeRange:
        """The microscopes training pairs are drawn from."""
        return MicroscopeRange((self.wavelength_min_um, self.wavelength_max_um),
                               (self.pixel_size_min_um, self.pixel_size_max_um), (self.fresnel_min, self.fresnel_max))


class QPITask(Task):
    """Quantitative phase imaging from a defocused intensity pair.

    Args:
        data: DataConfig. Physics (wavelength_um, pixel_size_um, defocus_um), phase_max and noise model.
    """

    name = "qpi"
    description = "quantitative phase imaging: phase from a defocused intensity pair (I(-dz), I(+dz))"
    DataConfig = DataConfig
    target_unit = "rad"
    target_name = "phase"
    package_tags = ("quantitative-phase-imaging", "transport-of-intensity", "brightfield")
    measurement_names = ["I_minus_dz", "I_plus_dz"]
    offset_free_outputs = ("mean",)
    noise_models = NOISE_MODELS
    options = TASK_OPTIONS["qpi"]
    crop_divisors = {"phase": 1}
    score_columns = (("mae_rad", "MAE (rad)", ".4f"), ("mae_paper", "MAE ([-1, 1])", ".4f"), ("psnr", "PSNR", ".2f"),
                     ("ssim", "SSIM", ".4f"), ("ms_ssim", "MS-SSIM", ".4f"))

    measurement_channels = 2

    @property
    def condition_channels(self) -> int:
        d = self.data
        return 2 + int(d.noise_channel) + int(d.fresnel_channel) + int(d.boundary_channel) + int(d.tie_channel)

    @property
    def condition_has_estimate(self) -> bool:
        return self.data.tie_channel

    estimate_option = "set data.tie_channel = true"

    @property
    def output_pixel_size_um(self) -> float:
        return self.data.pixel_size_um

    def describe_measurement(self) -> str:
        return "the raw intensity pair I(-dz), I(+dz), as `cvdm-tf simulate` writes it"

    # --- the measurement's physics ---
    physics_keys = ("wavelength_um", "pixel_size_um", "defocus_um")

    def with_stated_pixel_size(self, pixel_size_um, source):
        return self.with_physics(pixel_size_um=pixel_size_um)

    def describe_physics(self) -> str:
        return f"measured at {self.microscope.describe()}, boundary {self.data.boundary}"

    def __init__(self, data, microscope: Microscope | None = None):
        super().__init__(data)
        self._microscope = microscope  # tensors of an exported graph's inputs; None: the data config's

    @property
    def microscope(self) -> Microscope:
        """The measurement's physics: the data config's microscope, or the graph inputs of `with_physics_tensors`."""
        return self._microscope or self.data.microscope

    def check_physics(self):
        """An InputError naming the training range when the measurement's microscope lies outside it."""
        problem = self.data.training_range.problem(self.data.microscope.check())
        if problem:
            raise InputError(problem)

    def with_physics(self, wavelength_um=None, pixel_size_um=None, defocus_um=None, **other) -> "QPITask":
        """This task for a measurement made with other physics, in um (None keeps the current value): its TIE
        channel, refinement and output pixel size follow. Not checked against the training range
        (`check_physics`); a keyword that is no physical parameter of QPI is refused (`Task.with_physics`)."""
        super().with_physics(**other)
        given = {key: value for key, value in (("wavelength_um", wavelength_um), ("pixel_size_um", pixel_size_um),
                                               ("defocus_um", defocus_um)) if value is not None}
        if not given:
            return self
        Microscope(**{**vars(self.data.microscope), **given}).check()
        return type(self)(dataclasses.replace(self.data, **{key: float(value) for key, value in given.items()}))

    def with_physics_tensors(self, wavelength_um, pixel_size_um, defocus_um) -> "QPITask":
        """This task with the microscope given as scalar tensors (an exported graph's inputs), and a graph
        assertion that names the training range when they lie outside it."""
        microscope = Microscope(wavelength_um, pixel_size_um, defocus_um)
        checks = self.data.training_range.assert_contains(microscope)
        with tf.control_dependencies(checks):
            microscope = Microscope(*(tf.identity(value) for value in (wavelength_um, pixel_size_um, defocus_um)))
        return type(self)(self.data, microscope)

    # --- physics ---
    def measure(self, phase, boundary="periodic", microscope: Microscope | None = None):
        """phase [..., H, W] (radians) -> noise-free raw intensities [..., H, W, 2] = (I(-dz), I(+dz)) of the thin
        object amplitude(phi) * exp(i phi), through `microscope` (default: the measurement's); `boundary` as in
        `two_shot_intensities`."""
        m = microscope or self.microscope
        return two_shot_intensities(phase, m.defocus_um, m.wavelength_um, m.pixel_size_um,
                                    amplitude=self.amplitude(phase), boundary=boundary)

    def amplitude(self, phase):
        """The transmitted amplitude of an absorbing object, or None for a pure phase object (absorption = 0):
        1 - absorption * phi / phase_max, clipped to [1 - absorption, 1]: what delays the light (thick, dense,
        stained parts of a cell) also absorbs it."""
        d = self.data
        if not d.absorption:
            return None
        phase = tf.convert_to_tensor(phase)
        return tf.clip_by_value(1.0 - d.absorption * phase / d.phase_max, 1.0 - d.absorption, 1.0)

    def add_noise(self, intensities, seed, noise=None):
        """Noise model `noise` (default: the config's) on raw intensities [H, W, 2]; `seed` is a stateless seed [2]."""
        d = self.data
        noise = noise or d.noise
        if noise == "none":
            return intensities
        if noise == "paper":
            lam_n = tf.random.stateless_uniform([], seed=seed, maxval=d.noise_max)
            seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
            return intensities + lam_n + lam_n * tf.random.stateless_normal(tf.shape(intensities), seed=seed2)
        if noise == "poisson":
            counts = tf.random.stateless_poisson(
                tf.shape(intensities), seed=seed, lam=intensities * d.photons_per_pixel, dtype=tf.float32
            )
            seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
            read = d.read_noise * tf.random.stateless_normal(tf.shape(intensities), seed=seed2)
            return (counts + read) / d.photons_per_pixel
        raise ValueError(f"unknown noise model {noise!r}")

    # --- units ---
    def normalize_condition(self, intensities, microscope: Microscope | None = None, boundary: str | None = None):
        """Raw intensities [..., H, W, 2] -> network condition y (per image: divided by its mean intensity;
        plus the estimated noise level with `noise_channel`, the Fresnel number with `fresnel_channel`, 1 for a
        periodic field and 0 for a camera frame with `boundary_channel`, and the TIE phase in target units, last,
        with `tie_channel`), through `microscope` and `boundary` (defaults: the measurement's). Apply it to whole
        images, before any tiling."""
        d = self.data
        m = microscope or self.microscope
        boundary = boundary or d.boundary
        y = (_relative(intensities) - 1.0) * CONDITION_GAIN
        constant = lambda value: tf.ones_like(y[..., :1]) * value  # noqa: E731
        if d.noise_channel:
            sigma = self.noise_level(intensities)
            y = tf.concat([y, constant((NOISE_GAIN * sigma)[..., None, None, None])], axis=-1)
        if d.fresnel_channel:
            octaves = tf.math.log(tf.cast(m.fresnel_number, tf.float32) / FRESNEL_REFERENCE) / math.log(2.0)
            y = tf.concat([y, constant(octaves / 2.0)], axis=-1)
        if d.boundary_channel:
            y = tf.concat([y, constant(1.0 if boundary == "periodic" else 0.0)], axis=-1)
        if d.tie_channel:
            tie = self.baseline(intensities, self.tie_weight(intensities, m, boundary), self.tie_solver(boundary), m)
            y = tf.concat([y, 2.0 * tie / d.phase_max], axis=-1)
        return y

    def tie_solver(self, boundary: str | None = None) -> str:
        """The TIE channel's solver for a measurement of `boundary` (default: the measurement's): FFT for a
        periodic field, `data.tie_solver` for a camera frame."""
        return "fft" if (boundary or self.data.boundary) == "periodic" else self.data.tie_solver

    def tie_weight(self, intensities, microscope: Microscope | None = None, boundary: str | None = None):
        """The Tikhonov weight of the TIE channel: fixed, or each pair's noise-adaptive one; plus, for a camera
        frame, the frame's."""
        d = self.data
        weight = self.noise_weight(intensities, microscope) if d.tie_weight == "noise" else d.tie_regularization
        if d.tie_frame and (boundary or d.boundary) == "camera":
            shape = tf.shape(intensities)
            weight = weight + frame_regularization(shape[-3], shape[-2], d.tie_frame)
        return weight

    def noise_level(self, intensities):
        """Immerkaer's noise std of each pair [..., H, W, 2], divided by its mean intensity: float32 [...]."""
        return immerkaer_sigma(_relative(intensities))

    def noise_weight(self, intensities, microscope: Microscope | None = None):
        """Each pair's noise-adaptive Tikhonov weight, [..., 1, 1] (broadcasts over its H x W)."""
        m = microscope or self.microscope
        weight = noise_adaptive_regularization(self.noise_level(intensities), m.defocus_um, m.wavelength_um,
                                               m.pixel_size_um)
        return weight[..., None, None]

    condition = normalize_condition

    def units(self, measurement):
        """x -> radians is a fixed rescaling (targets were zero-mean: the phase is known only up to a constant)."""
        zeros = tf.zeros_like(tf.reduce_mean(measurement, axis=[-3, -2, -1], keepdims=True))
        return zeros, zeros + self.data.phase_max / 2.0

    def normalize_target(self, phase):
        """phase [..., H, W] radians -> x [..., H, W, 1], offset-free: 2 (phi - mean(phi)) / phase_max."""
        phase = phase - tf.reduce_mean(phase, axis=[-2, -1], keepdims=True)
        return (2.0 * phase / self.data.phase_max)[..., None]

    def denormalize_target(self, x):
        """x [..., H, W, 1] -> phase in radians [..., H, W, 1]."""
        return x * (self.data.phase_max / 2.0)

    def denormalize_spread(self, std):
        """A standard deviation in x units -> radians."""
        return std * (self.data.phase_max / 2.0)

    # --- pairs and baseline ---
    def field_size(self, size: int) -> int:
        """Side of the bank crop a training pair of `size` px is simulated from: the camera's wider field, and
        room to zoom out to the largest pixel size of the training range (source images count as sampled at
        `pixel_size_um`)."""
        d = self.data
        wide = size * (CAMERA_FIELD if d.crop_boundary == "camera" else 1)
        zoom = max(d.pixel_size_max_um / d.pixel_size_um, 1.0)
        return int(math.ceil(wide * zoom - 1e-9))

    def training_microscope(self, seed) -> Microscope:
        """The microscope of one training pair: drawn from the training range, or the fixed one."""
        if self.data.training_range.is_single:
            return self.microscope
        return self.data.training_range.draw(seed)

    def pair(self, crop, seed):
        """One training pair from a crop {"phase": [S, S, 1]}, S = field_size(image_size): (y [size, size, C_y],
        x [size, size, 1]), size = image_size (any S when the crop is simulated as it is: one microscope, not
        "camera").

        Steps:
            1. the pair's microscope (drawn from the training range);
            2. the field it sees: a centred window of the crop, size * CAMERA_FIELD (camera) or size px at the
               pair's pixel size, resampled to that many pixels (zoom: a coarser pixel sees more of the object);
            3. phase scaling ("crop"), Fresnel propagation of the field (boundary as crop_boundary), noise; camera
               crops: the centre size x size px of intensities and phase, or with `periodic_fraction` that share
               of pairs the centre simulated on its own, a periodic field;
            4. the condition, with the pair's microscope and boundary, and the offset-free target.
        """
        d = self.data
        microscope = self.training_microscope(tf.random.experimental.stateless_fold_in(seed, 3))
        size = int(crop["phase"].shape[0])  # static: field_size(image_size)
        camera, zoom = d.crop_boundary == "camera", not d.training_range.is_single
        out = d.image_size if camera or zoom else size
        wide = out * (CAMERA_FIELD if camera else 1)
        phase = crop["phase"]
        if zoom or size != wide:
            # A window of wide * dx / pixel_size_um source pixels (rounded; the pixel size follows the rounding,
            # at the drawn F), resampled with antialiasing to `wide` pixels.
            window = tf.cast(tf.round(wide * microscope.pixel_size_um / d.pixel_size_um), tf.int32)
            window = tf.clip_by_value(window, 1, size)
            pixel = d.pixel_size_um * tf.cast(window, tf.float32) / wide
            microscope = Microscope(microscope.wavelength_um, pixel,
                                    microscope.fresnel_number * pixel**2 / microscope.wavelength_um)
            start = (size - window) // 2
            phase = tf.image.resize(phase[start:start + window, start:start + window], [wide, wide], antialias=True)
        phase = phase[..., 0]
        if d.phase_scaling == "crop":
            lowest, highest = tf.reduce_min(phase), tf.reduce_max(phase)
            phase = (phase - lowest) / tf.maximum(highest - lowest, 1e-6) * d.phase_max
        start = (wide - out) // 2
        centre = (slice(start, start + out), slice(start, start + out))

        def simulate(field, boundary, crop_to_centre):
            clean = self.measure(field, boundary=boundary, microscope=microscope)
            intensities = self.add_noise(clean, seed)
            if d.noise_free_fraction > 0:
                # Without enough clean pairs the model never learns that a clean pair leaves nothing to correct.
                draw = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(seed, 2))
                intensities = tf.where(draw < d.noise_free_fraction, clean, intensities)
            return intensities[centre] if crop_to_centre else intensities

        if not camera:  # the crop is the field: periodic, or continued by its mirror image (conditioned as a frame)
            intensities = simulate(phase, d.crop_boundary, False)
            kind = "periodic" if d.crop_boundary == "periodic" else "camera"
            return self.normalize_condition(intensities, microscope, kind), self.normalize_target(phase)
        frame = lambda: self.normalize_condition(simulate(phase, "periodic", True), microscope, "camera")  # noqa
        target = self.normalize_target(phase[centre])
        if not d.periodic_fraction:
            return frame(), target
        periodic = lambda: self.normalize_condition(simulate(phase[centre], "periodic", False), microscope,  # noqa
                                                    "periodic")
        draw = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(seed, 4))
        return tf.cond(draw < d.periodic_fraction, periodic, frame), target

    def baseline(self, intensities, regularization=1e-6, solver="fft", microscope: Microscope | None = None):
        """The classical answer: TIE phase (zero-mean radians) [..., H, W, 1] by the "fft", "dct" or "pad"
        solver, through `microscope` (default: the measurement's)."""
        m = microscope or self.microscope
        phase = TIE_SOLVERS[solver](intensities, m.defocus_um, m.wavelength_um, m.pixel_size_um, regularization)
        return phase[..., None]

    # --- after sampling ---
    @property
    def refines(self) -> bool:
        return self.data.data_consistency > 0

    def refine(self, samples, measurement):
        """Data consistency (physics.consistency.project): each phase sample [..., K, H, W, 1] (rad) moved, in
        `data_consistency` steps, to reproduce its intensity pair [..., H, W, 2] through `measure`, with TIE at
        consistency_weight times the pair's noise-adaptive weight as the pseudo-inverse. Offset-free in and out.
        Pure TensorFlow (traced into the SavedModel).

        A periodic field (`boundary = "periodic"`): forward and TIE on the periodic grid, as the periodic
        simulation makes the pair. A camera frame: the forward model continues the sample by its mirror image,
        and the pseudo-inverse is `tie_dirichlet`, which ignores the source within 2 sqrt(F) px of the edge (a few
        Fresnel zones, where light came from outside the frame) and holds the correction at 0 on the edge: the
        sample's Laplacian inside the frame is made the measurement's, its edge values (what the frame does not
        fix) stay.
        """
        d = self.data
        if not self.refines:
            return samples
        m = self.microscope
        pair = tf.convert_to_tensor(measurement, tf.float32)[..., None, :, :, :]
        weight = d.consistency_weight * self.noise_weight(pair)
        physics = (m.defocus_um, m.wavelength_um, m.pixel_size_um)
        if d.boundary == "camera":
            margin = tf.cast(tf.math.ceil(2.0 * tf.sqrt(tf.cast(m.fresnel_number, tf.float32))), tf.int32)
            forward = lambda phase: self.measure(phase, boundary="mirror")  # noqa: E731
            inverse = lambda intensities: tie_dirichlet(intensities, *physics, weight, margin)  # noqa: E731
        else:
            forward = self.measure
            inverse = lambda intensities: tie_fft(intensities, *physics, weight)  # noqa: E731
        phase = project(tf.convert_to_tensor(samples, tf.float32)[..., 0], pair, forward, inverse,
                        d.data_consistency)
        return phase[..., None]

    # --- training data ---
    def training_banks(self, validation_fraction, seed, min_size, warn=None):
        images = load_ground_truth(self.data, min_size, warn)
        train, val = sources.split_by_image(images, validation_fraction, seed)
        bank = lambda items: InMemoryBank([{"phase": image[..., None]} for _, image in items])  # noqa: E731
        return bank(train), (bank(val) if val else None), f"{len(train)} training + {len(val)} validation images"

    # --- files ---
    def read_file(self, path, message=None, physics=None, z_step_um=None, focus=None):
        """(task, pairs) of one input file, the task carrying the file's physics:
            1. what the user gave (`physics`: wavelength_um, pixel_size_um, defocus_um; None where not given);
            2. else the pixel size the file's metadata states (OME, ImageJ, TIFF resolution in a length unit);
            3. else the run's;
        and for a through-focus z-stack the defocus of the planes actually paired (the nearest to +-defocus)."""
        task = self.for_measurement(physics, stated_pixel_size_um(path), path, message)
        stack = task._through_focus(path, z_step_um, None, focus, message)
        if stack is None:
            return task, sources.read_stack(path)
        return task.with_physics(defocus_um=stack.defocus_um), [stack.pair]

    def read_measurements(self, path, message=None, z_step_um=None, defocus_um=None, focus=None):
        """The pair(s) in a file; a through-focus z-stack (`z_step_um` given, or in the TIFF's metadata) gives the
        pair at +-defocus_um (default: the measurement's) around its focus plane (`focus`, default minimum
        contrast). `read_file` also gives the physics the pairs were taken with."""
        stack = self._through_focus(path, z_step_um, defocus_um, focus, message)
        if stack is None:
            return sources.read_stack(path)
        return [stack.pair]

    def _through_focus(self, path, z_step_um, defocus_um, focus, message=None):
        """The z-stack in `path` and the planes of its pair, or None when `path` is not a z-stack."""
        from types import SimpleNamespace

        from cvdm_tf.data import stacks

        # A z-stack: --z-step given, or z spacing in the TIFF's metadata (read from the header first, so a plain
        # image is read once, by its reader).
        stored = stacks.z_step(path) if Path(path).suffix.lower() in (".tif", ".tiff") else None
        if z_step_um is None and stored is None:
            return None
        if z_step_um is None:
            try:
                planes, _ = stacks.read_stack(path)
            except InputError:
                return None  # z metadata, but not a Z x H x W stack (e.g. an ImageJ pair): read it as images
            z_step_um = stored
        else:
            planes, _ = stacks.read_stack(path)
        if stored is not None and not np.isclose(stored, z_step_um, rtol=1e-3) and message:
            message(f"{path}: --z-step {z_step_um} um overrides the file's z spacing {stored} um")
        if not (np.isfinite(z_step_um) and z_step_um > 0):
            raise InputError(f"{path}: z step must be > 0 um, got {z_step_um}")
        z = np.arange(len(planes)) * z_step_um
        focus = through_focus.focus_index(planes) if focus is None else focus
        dz = defocus_um or self.data.defocus_um
        try:
            before, after = through_focus.two_shot_planes(z, dz, focus)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
        used = float(z[after] - z[before]) / 2
        if message:
            message(f"{path}: {len(planes)} planes, {z_step_um} um apart; focus plane {focus}, pair = planes "
                    f"{before} and {after} (defocus {used:g} um)")
        return SimpleNamespace(planes=planes, z=z, focus=focus, defocus_um=used,
                               pair=np.stack([planes[before], planes[after]], axis=-1).astype(np.float32))

    def is_truth_file(self, path, stems):
        # `cvdm-tf simulate` writes NAME.tif beside NAME_phase.tif (the truth): the truth is not a measurement.
        return path.stem.endswith("_phase") and (path.parent, path.stem[: -len("_phase")]) in stems

    def truths(self, path) -> list[tuple[str, np.ndarray]]:
        """Ground-truth phases [H, W] in radians of the images in `path`."""
        return [(name, phase_from_image(image, dtype, self.data.phase_max))
                for name, image, dtype in sources.iter_source_images(path, with_dtype=True)]

    def simulate_files(self, input_path, out_dir, noise, seed):
        """NAME.tif (raw H x W x 2 pair I(-dz), I(+dz)) and NAME_phase.tif (radians) per ground-truth image.
        A float image is taken as phase in radians; an integer one is scaled from its range to [0, phase_max]."""
        cases = self.eval_cases(input_path, noise, seed)  # everything read and checked before anything is written
        out_dir = Path(out_dir)
        for case in cases:
            io.write_tiff(out_dir / f"{case.name}.tif", case.measurement, pixel_size_um=self.data.pixel_size_um)
            io.write_tiff(out_dir / f"{case.name}_phase.tif", case.truth, pixel_size_um=self.data.pixel_size_um)
        return len(cases)

    # --- evaluation ---
    def eval_cases(self, data_path, noise, seed, z_step_um=None, defocus_um=None, focus=None):
        """Simulated pairs of ground-truth phase images; or, for a through-focus z-stack (`z_step_um`, or z spacing
        in its metadata), the 2-shot pair at +-dz with the multi-plane reference phase as the truth (the paper's
        Table 2(b): polynomial fit of I(z) per pixel, its derivative at focus into US-TIE)."""
        stack = self._through_focus(data_path, z_step_um, defocus_um, focus) if Path(data_path).is_file() else None
        if stack is not None:
            d = self.data
            truth, _ = through_focus.reference_phase(stack.planes, stack.z, d.wavelength_um, d.pixel_size_um,
                                                     focus=stack.focus)
            if not np.isclose(stack.defocus_um, d.defocus_um, rtol=1e-2):
                raise InputError(f"{data_path}: the planes nearest to +-{defocus_um or d.defocus_um:g} um are "
                                 f"{stack.defocus_um:g} um from focus; eval compares every method at the run's "
                                 f"defocus {d.defocus_um:g} um (choose a z-stack whose step divides it)")
            return [Case(Path(data_path).stem, stack.pair, truth)]
        return [self.simulate_case(name, phase, noise, (seed, index))
                for index, (name, phase) in enumerate(self.truths(data_path))]

    def simulate_case(self, name, phase, noise, seed) -> Case:
        """The measurement of one ground-truth phase image [H, W] (rad): simulated whole (periodic), `noise` added
        (stateless `seed` pair); with `data.camera_crop` N, the central N x N px of the pair and of the truth,
        a camera frame of a field the image is (its edges cut through objects, and light reaches them from
        outside the frame)."""
        raw = self.add_noise(self.measure(tf.constant(phase, tf.float32)), tf.constant(seed, tf.int64), noise=noise)
        raw, phase = raw.numpy().astype(np.float32), np.asarray(phase, np.float32)
        crop = self.data.camera_crop
        if crop:
            height, width = phase.shape
            if crop > min(height, width):
                raise InputError(f"{name}: {height} x {width} px, smaller than the camera crop {crop} px")
            top, left = (height - crop) // 2, (width - crop) // 2
            raw, phase = raw[top:top + crop, left:left + crop], phase[top:top + crop, left:left + crop]
        return Case(name, raw, phase)

    def baselines(self):
        return {"tie": lambda **options: TIEBaseline(self, **options),
                "tie-noise": lambda **options: TIEBaseline(self, regularization="noise", **options),
                "tie-dct": lambda **options: TIEBaseline(self, solver="dct", **options),
                "tie-pad": lambda **options: TIEBaseline(self, solver="pad", **options),
                "us-tie": lambda **options: TIEBaseline(self, solver="us", **options),
                # The model's own TIE solver, oracle weight, then the model's data-consistency step.
                "tie-step": lambda **options: TIEBaseline(self, solver=self.tie_solver(), refine=True, **options)}

    def centre(self, estimate, truth):
        return metrics.offset_free(np.asarray(estimate, np.float64), np.asarray(truth, np.float64))

    def score(self, estimate, truth):
        """Offset-free (each image's mean removed: the phase is known up to a constant); MAE in radians and in the
        paper's [-1, 1] scale; PSNR, SSIM and MS-SSIM with the truth's range as data range."""
        a, b = self.centre(estimate, truth)
        data_range = float(np.ptp(b)) or 1.0
        error = metrics.mae(a, b)
        return {"mae_rad": error, "mae_paper": error * 2.0 / self.data.phase_max,
                "psnr": metrics.psnr(a, b, data_range), "ssim": metrics.ssim(a, b, data_range),
                "ms_ssim": metrics.ms_ssim(a, b, data_range)}


class TIEBaseline(Baseline):
    """A TIE solver (FFT, DCT, or US-TIE for non-uniform intensity) with its Tikhonov weight tuned on the evaluated
    images and their truth unless given: an oracle choice that makes it the best that solver can do.
    `regularization = "noise"` instead picks each image's weight from the noise level of its own pair
    (`noise_adaptive_regularization`): no truth, what a user can run."""

    SOLVERS = {**TIE_SOLVERS, "us": tie_us}

    def __init__(self, task: QPITask, regularization: float | str | None = None, solver: str = "fft",
                 refine: bool = False):
        self.task = task
        self.regularization = regularization
        self.solver = solver
        self.refine = refine and task.refines
        self.name = {"fft": "tie", "dct": "tie-dct", "pad": "tie-pad", "us": "us-tie"}[solver] + (
            "-noise" if regularization == "noise" else "") + ("-step" if refine else "")

    def tune(self, cases):
        if self.regularization == "noise":
            return {}
        if self.regularization is None:
            d = self.task.data
            # Images may differ in size, so tune on each and take the geometric median.
            choices = [tune_regularization(case.measurement[None], case.truth[None], solver=self.solver,
                                           defocus_um=d.defocus_um, wavelength_um=d.wavelength_um,
                                           pixel_size_um=d.pixel_size_um)[0] for case in cases]
            self.regularization = float(np.exp(np.median(np.log(np.maximum(choices, 1e-300)))))
        return {f"{self.name.replace('-', '_')}_regularization": self.regularization}

    def __call__(self, measurement):
        d = self.task.data
        weight = self.task.noise_weight(measurement) if self.regularization == "noise" else self.regularization
        phase = self.SOLVERS[self.solver](tf.constant(measurement), d.defocus_um, d.wavelength_um, d.pixel_size_um,
                                          weight)
        if self.refine:  # the step the model's samples get, on TIE as the only sample
            phase = self.task.refine(phase[None, :, :, None], measurement)[0, :, :, 0]
        return np.asarray(phase)


def _relative(intensities):
    """Intensities [..., H, W, C] divided by each image's mean: the illumination level removed."""
    mean = tf.reduce_mean(intensities, axis=[-3, -2, -1], keepdims=True)
    return intensities / tf.maximum(mean, 1e-6)


def phase_from_image(image: np.ndarray, source_dtype, phase_max: float) -> np.ndarray:
    """[H, W] radians from a read image: float as it is, integer scaled to [0, phase_max]."""
    gray = sources.to_grayscale(image)[..., 0]
    if np.issubdtype(np.dtype(source_dtype), np.floating):
        return gray.astype(np.float32)
    return (sources.to_unit_range(gray, source_dtype) * phase_max).astype(np.float32)


def load_ground_truth(data_config, min_size: int, warn=None) -> list[tuple[str, np.ndarray]]:
    """The ground-truth phase images of a data config as (name, [H, W] float32 radians).

    `source = ""` takes the images embedded in scikit-image but EVAL_IMAGES; otherwise a folder (searched
    recursively), an image, or a .npy/.npz stack. Integer images are scaled by their dtype's range, float images
    by their own min/max, then to [0, phase_max] over the whole image (`phase_scaling = "image"`; "crop" leaves
    them in [0, 1] and scales every crop to [0, phase_max] instead).

    Images smaller than `min_size` (the training crop) on either side are skipped, each named in one line through
    `warn(message)`; an InputError if none is left (or if a file is unreadable or has NaN/Inf pixels).
    """
    if data_config.source:
        items = [(name, sources.to_unit_range(sources.to_grayscale(image), dtype)[..., 0])
                 for name, image, dtype in sources.iter_source_images(data_config.source, with_dtype=True)]
    else:
        items = [(name, image[..., 0]) for name, image in sources.embedded_images() if name not in EVAL_IMAGES]
    usable = sources.large_enough(items, min_size, data_config.source or "the embedded images", warn)
    if data_config.phantoms:
        # Synthetic cells beside the natural images widen the training distribution towards what a phase
        # microscope sees (smooth bodies, sharp edges); their seed is apart from the benchmarks' test phantoms.
        rng = np.random.default_rng(TRAINING_PHANTOM_SEED)
        size = max(256, min_size)
        usable += [(f"phantom_{i:03d}", cell_phantom(size, rng, peak=rng.uniform(0.4, 1.0)))
                   for i in range(data_config.phantoms)]
    if data_config.phase_scaling == "image":
        usable = [(name, (image * data_config.phase_max).astype(np.float32)) for name, image in usable]
    return usable


def camera_fields(cells: int, size: int, pixel_size_um: float, seed: int, phase_max: float,
                  natural=EVAL_IMAGES) -> list[tuple[str, np.ndarray]]:
    """Held-out wide fields for the camera-crop benchmark, as (name, [size, size] phase in rad): `cells` fields
    of cell phantoms (cells of 2-5.5 um at `pixel_size_um`, seed `seed`: never the training phantoms' seed) and
    one window of each `natural` embedded image (held out of training), phase over the whole image in
    [0, phase_max] as training scales it, the window covering size * pixel_size_um / 0.21 source pixels (the
    images count as sampled at 0.21 um), resampled with antialiasing. Crop their centres (`data.camera_crop`)
    to get camera frames."""
    from skimage.transform import resize

    from cvdm_tf.data.phantoms import REFERENCE_PIXEL_UM, cell_phantoms

    rng = np.random.default_rng(seed)
    fields = [(f"cells{i}", phase) for i, phase in enumerate(
        cell_phantoms(cells, size, seed=seed, peak=phase_max * 0.85, pixel_size_um=pixel_size_um))]
    images = dict(sources.embedded_images())
    for name in natural:
        image = images[name][..., 0] * phase_max
        window = int(round(size * pixel_size_um / REFERENCE_PIXEL_UM))
        if window > min(image.shape):
            raise InputError(f"{name}: {image.shape[0]} x {image.shape[1]} px, too small for a {window} px window")
        top, left = (int(rng.integers(0, n - window + 1)) for n in image.shape)
        patch = image[top:top + window, left:left + window]
        fields.append((name, resize(patch, (size, size), anti_aliasing=window > size).astype(np.float32)))
    return fields
