"""4x super-resolution of natural images (the paper's section 4.3 and appendix L, ImageNet 64 -> 256).

    measurement m   low-resolution image [h, w, C] in [0, 1] (integer files divided by their bit depth when read;
                    float files stretched by their own min / max, which infer's outputs undo)
    condition y     2 up(m) - 1: m resampled 4x back to the high-resolution grid [4h, 4w, C], in [-1, 1]
    target x        2 HR - 1: the high-resolution image [4h, 4w, C], in [-1, 1]
    units           x -> [0, 1]: value = (x + 1) / 2; infer writes the result in the input file's value range
                    and dtype family (a uint8 PNG in gives uint8 values out)

A training pair, in order:
    1. a random `data.image_size` crop HR of a whole image (images smaller than the crop are resized up first),
       C = `data.channels` (3: colour, grey images replicated; 1: grey, colour images reduced to luminance);
    2. the low-resolution image: antialiased 4x downsampling of HR (`data.resampling`: bicubic, as SR3, or
       Lanczos-3, as the CVDM reference), clipped to [0, 1] and rounded to 8 bits (what an LR file holds);
    3. the condition: LR upsampled 4x with the same kernel, so y is also a (blurred) estimate of x, and
       `model.mean = "condition"` diffuses the residual around it (doing nothing gives the bicubic baseline).

Training images, by `data.source`: "" = the photographs and micrographs that ship inside scikit-image, colour and
grey, except EVAL_IMAGES (held out by image for `eval --data embedded` and benchmarks/sr_table.py); or a folder
(JPEG / PNG / TIFF trees: read from disk per crop, any size), or one image / stack file.

Scores (as SR papers): estimate and truth in [0, 255] (the estimate clipped and rounded to 8 bits), a border of
`scale` px shaved off, then PSNR and SSIM on RGB (SSIM averaged over channels) and on the luma Y of ITU-R BT.601
(Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1], as MATLAB's rgb2ycbcr; a grey image counts as
R = G = B), both with data range 255.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from cvdm_tf import io, metrics
from cvdm_tf.config import check_choice, check_positive
from cvdm_tf.data import readers, sources
from cvdm_tf.data.pipeline import FileBank, InMemoryBank
from cvdm_tf.errors import InputError
from cvdm_tf.tasks import TASK_OPTIONS
from cvdm_tf.tasks.base import Baseline, Case, Task

SCALE = 4
RESAMPLING = ("bicubic", "lanczos")
_TF_METHOD = {"bicubic": "bicubic", "lanczos": "lanczos3"}
#: Embedded images never trained on (source = ""): `eval --data embedded` and benchmarks/sr_table.py use them.
EVAL_IMAGES = ("astronaut", "coffee", "camera")
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: ITU-R BT.601 luma of R, G, B in [0, 1], in [16, 235] (MATLAB's rgb2ycbcr, the SR papers' Y channel).
LUMA_WEIGHTS = (65.481, 128.553, 24.966)
LUMA_OFFSET = 16.0


@dataclass(frozen=True)
class DataConfig:
    """The [data] table of the 4x SR task: image source, crop size, channels, resampling kernel."""

    source: str = ""  # "" = the images embedded in scikit-image (less EVAL_IMAGES); a folder, an image or a stack
    image_size: int = 64  # high-resolution crop, px (the low-resolution crop is image_size / 4)
    channels: int = 3  # 3: colour (grey images replicated); 1: grey (colour images reduced to luminance)
    resampling: str = "bicubic"  # kernel of the antialiased 4x down- and up-sampling: bicubic | lanczos
    augment: bool = True

    def __post_init__(self):
        check_choice("data.resampling", self.resampling, RESAMPLING)
        check_positive("data.image_size", self.image_size)
        if self.channels not in (1, 3):
            raise InputError(f"data.channels: must be 1 (grey) or 3 (colour), got {self.channels}")
        if self.image_size % SCALE:
            raise InputError(f"data.image_size: {self.image_size} must be a multiple of {SCALE}")


class SR4xTask(Task):
    """4x super-resolution: a low-resolution image [h, w, C] -> the image on the 4x grid [4h, 4w, C].

    Args:
        data: DataConfig.
    """

    name = "sr4x"
    description = "4x super-resolution of natural images (colour or grey)"
    DataConfig = DataConfig
    scale = SCALE
    options = TASK_OPTIONS["sr4x"]
    crop_divisors = {"image": 1}
    input_suffixes = FILE_SUFFIXES
    condition_has_estimate = True
    score_columns = (("psnr_rgb", "PSNR RGB", ".2f"), ("ssim_rgb", "SSIM RGB", ".4f"),
                     ("psnr_y", "PSNR Y", ".2f"), ("ssim_y", "SSIM Y", ".4f"),
                     ("spectral_db", "spectral error Y (dB)", ".2f"))

    def __init__(self, data):
        super().__init__(data)
        self._value_ranges = {}  # str(path) -> (dtype, low, high) of the files read, for write_outputs

    @property
    def measurement_channels(self) -> int:
        return self.data.channels

    @property
    def condition_channels(self) -> int:
        return self.data.channels

    @property
    def target_channels(self) -> int:
        return self.data.channels

    def describe_measurement(self) -> str:
        return f"a low-resolution {'RGB' if self.data.channels == 3 else 'grey'} image (the run's data.channels)"

    # --- units ---
    def condition(self, measurement):
        """LR [..., h, w, C] in [0, 1] -> 2 up(LR) - 1 [..., 4h, 4w, C]."""
        return 2.0 * resample(measurement, SCALE, self.data.resampling) - 1.0

    def units(self, measurement):
        half = 0.5 * tf.ones_like(tf.convert_to_tensor(measurement)[..., :1, :1, :1])
        return half, half

    def low_resolution(self, image):
        """HR [..., H, W, C] in [0, 1] -> LR [..., H/4, W/4, C]: antialiased downsampling, clipped, 8 bits."""
        low = resample(image, 1 / SCALE, self.data.resampling)
        return tf.round(tf.clip_by_value(low, 0.0, 1.0) * 255.0) / 255.0

    # --- training pairs ---
    def pair(self, crop, seed):
        """(y, x) from {"image": HR [S, S, C] in [0, 1]}; deterministic given the crop."""
        image = crop["image"]
        return self.condition(self.low_resolution(image)), 2.0 * image - 1.0

    def prepare(self, image, dtype=None, min_size: int = 0):
        """A file's pixels (`dtype`: the file's, for `to_unit_range`; None: already in [0, 1]) -> [H, W,
        data.channels] in [0, 1], resized up (bicubic) to at least `min_size` a side."""
        image = image if dtype is None else readers.to_unit_range(image, dtype)
        image = to_channels(image, self.data.channels)
        side = min(image.shape[:2])
        if side < min_size:
            from skimage.transform import resize

            factor = min_size / side
            shape = (max(min_size, round(image.shape[0] * factor)), max(min_size, round(image.shape[1] * factor)))
            image = np.clip(resize(image, shape, order=3, anti_aliasing=False), 0, 1).astype(np.float32)
        return image

    def training_banks(self, validation_fraction, seed, min_size, warn=None):
        d = self.data
        if not d.source:
            items = [(name, to_channels(image, d.channels)) for name, image in embedded_color_images()
                     if name not in EVAL_IMAGES]
            items = [(name, self.prepare(image, None, min_size)) for name, image in items]
            where = f"images embedded in scikit-image (less {', '.join(EVAL_IMAGES)})"
        else:
            source = Path(d.source)
            if source.is_dir():
                return self._file_banks(source, validation_fraction, seed, min_size)
            items = [(name, self.prepare(image, dtype, min_size))
                     for name, image, dtype in sources.iter_source_images(source, with_dtype=True)]
            where = str(source)
        train, val = sources.split_by_image(items, validation_fraction, seed)
        bank = lambda chosen: InMemoryBank([{"image": image} for _, image in chosen], self.crop_divisors)  # noqa
        return (bank(train), bank(val) if val else None,
                f"{len(train)} training + {len(val)} validation {where}")

    def _file_banks(self, folder, validation_fraction, seed, min_size):
        """A folder of any size: images listed with their sizes from the headers, read when a crop needs them."""
        files = sources.list_images(folder, suffixes=FILE_SUFFIXES)
        train, val = sources.split_by_image(files, validation_fraction, seed)

        def bank(paths):
            sizes = []
            for path in paths:
                height, width = image_size(path)
                factor = max(1.0, min_size / min(height, width))
                sizes.append((max(min_size, round(height * factor)), max(min_size, round(width * factor))))

            def load(index):
                image, dtype = readers.read_image_with_dtype(paths[index])
                image = self.prepare(image, dtype, min_size)
                if image.shape[:2] != sizes[index]:  # a header that disagrees with the pixels: fit the listed size
                    from skimage.transform import resize

                    image = resize(image, sizes[index], order=1).astype(np.float32)
                return {"image": image}

            return FileBank(sizes, load, {"image": self.data.channels}, self.crop_divisors)

        return bank(train), bank(val) if val else None, f"{len(train)} training + {len(val)} validation images " \
                                                        f"of {folder}"

    # --- files ---
    def read_measurements(self, path, message=None):
        """Every image of a file, in [0, 1] (an alpha channel dropped); its value range is kept for the outputs."""
        stack = readers.read_stack_with_dtype(path)
        images = [image[..., :-1] if image.shape[-1] in (2, 4) else image for image, _ in stack]  # no alpha
        dtype = np.dtype(stack[0][1])
        low, high = min(float(image.min()) for image in images), max(float(image.max()) for image in images)
        self._value_ranges[os.fspath(path)] = (dtype, low, high)
        if dtype.kind not in "uib":  # float files: one stretch for the whole file, undone by write_outputs
            return [((image - low) / ((high - low) or 1.0)).astype(np.float32) for image in images]
        return [readers.to_unit_range(image, dtype) for image in images]

    def write_outputs(self, out_dir, name, raw, result, source=None, made_by="", estimate="mean",
                      mean_network_estimate="E[x|y]"):
        """NAME_mean.png (8 bits) and NAME_mean.tif in the input's value range and dtype family (uint8 / uint16
        values, or float32 in the float input's own range), the same for NAME_median and NAME_mean_network where
        `result` has them (`infer --median`, `--mean-network`), NAME_std.tif (float32, the same units; and
        NAME_std_recalibrated.tif where the run has a fit for the setting, `cvdm-tf calibrate`),
        NAME_schedule.tif and NAME_preview.png (showing `estimate`; `mean_network_estimate` unused: these files
        carry no channel names)."""
        from cvdm_tf.inference import ESTIMATES
        from cvdm_tf.previews import preview_image

        dtype, low, high = self._value_ranges.get(os.fspath(source), (np.dtype(np.uint8), 0.0, 255.0))
        if dtype.kind in "ui":
            span = float(np.iinfo(dtype).max)
            to_input = lambda unit: np.round(unit * span).astype(dtype)  # noqa: E731
        elif dtype.kind == "b":
            span, to_input = 1.0, (lambda unit: unit.astype(np.float32))
        else:
            span = (high - low) or 1.0
            to_input = lambda unit: (unit * span + low).astype(np.float32)  # noqa: E731
        out_dir = Path(out_dir)
        paths = []
        for key in ESTIMATES:
            if key in result:
                unit = np.clip(result[key], 0.0, 1.0)
                paths += [io.write_png(out_dir / f"{name}_{key}.png", _to_uint8(unit)),
                          _write_tiff(out_dir / f"{name}_{key}.tif", to_input(unit))]
        for key in ("std", "std_recalibrated"):
            if key in result:
                paths.append(io.write_tiff(out_dir / f"{name}_{key}.tif", (result[key] * span).astype(np.float32),
                                           description=made_by))
        return paths + [io.write_tiff(out_dir / f"{name}_schedule.tif", result["schedule"], description=made_by),
                        io.write_png(out_dir / f"{name}_preview.png",
                                     preview_image(raw, np.clip(result[estimate], 0.0, 1.0), result["std"],
                                                   result["schedule"], estimate=estimate))]

    def is_truth_file(self, path, stems):
        return path.parent.name.lower() == "hr"  # `cvdm-tf simulate` writes DIR/lr/NAME.png + DIR/hr/NAME.png

    def simulate_files(self, input_path, out_dir, noise, seed):
        """DIR/lr/NAME.png (the 4x-downsampled image) and DIR/hr/NAME.png (the image, cropped to a multiple of 4),
        8-bit, for every image of `input_path`."""
        cases = self._image_cases(sources.iter_source_images(input_path, with_dtype=True))
        for case in cases:
            for folder, image in (("lr", case.measurement), ("hr", case.truth)):
                io.write_png(Path(out_dir) / folder / f"{case.name}.png", _to_uint8(image))
        return len(cases)

    # --- evaluation ---
    def eval_cases(self, data_path, noise, seed):
        """High-resolution images (a folder or a file; `embedded`: the held-out EVAL_IMAGES), each downsampled
        4x; or a folder with lr/ and hr/ pairs as `cvdm-tf simulate` writes them."""
        path = Path(data_path)
        if not path.exists() and str(data_path) == "embedded":
            chosen = [(name, image, None) for name, image in embedded_color_images() if name in EVAL_IMAGES]
            return self._image_cases(chosen)
        if not path.exists():
            raise InputError(f"{data_path}: no such file or folder")
        if path.is_dir() and (path / "lr").is_dir() and (path / "hr").is_dir():
            return self._pair_cases(path)
        return self._image_cases(sources.iter_source_images(path, with_dtype=True))

    def _image_cases(self, items):
        cases = []
        for name, image, dtype in items:
            image = self.prepare(image, dtype)
            h, w = image.shape[0] // SCALE * SCALE, image.shape[1] // SCALE * SCALE
            if min(h, w) < 4 * SCALE:
                raise InputError(f"{name}: {image.shape[0]} x {image.shape[1]} is too small for 4x super-resolution")
            truth = image[:h, :w]
            low = self.low_resolution(tf.constant(truth)).numpy()
            cases.append(Case(name, low, truth))
        return cases

    def _pair_cases(self, folder):
        cases = []
        for low_path in sources.list_images(folder / "lr", suffixes=FILE_SUFFIXES):
            matches = [p for p in (folder / "hr").glob(low_path.stem + ".*") if p.suffix.lower() in FILE_SUFFIXES]
            if not matches:
                raise InputError(f"{low_path}: no high-resolution image {folder / 'hr' / low_path.stem}.*")
            low, high = (to_channels(readers.to_unit_range(*readers.read_image_with_dtype(p)), self.data.channels)
                         for p in (low_path, matches[0]))
            if high.shape[:2] != (SCALE * low.shape[0], SCALE * low.shape[1]):
                raise InputError(f"{matches[0]}: {high.shape[0]} x {high.shape[1]} is not 4x its low-resolution "
                                 f"image ({low.shape[0]} x {low.shape[1]})")
            cases.append(Case(low_path.stem, low, high))
        return cases

    def baselines(self):
        return {"bicubic": lambda: BicubicBaseline()}

    def score(self, estimate, truth):
        """PSNR and SSIM on RGB and on the BT.601 luma Y, in [0, 255], `scale` px border shaved (module doc); the
        distance of the luma's power spectrum from the truth's (dB, `metrics.spectral_error_db`)."""
        a, b = (_shave(_as_image(v)) for v in (np.round(np.clip(estimate, 0, 1) * 255.0), truth * 255.0))
        ya, yb = luma(a / 255.0), luma(b / 255.0)
        return {"psnr_rgb": metrics.psnr(a, b, 255.0), "ssim_rgb": metrics.ssim(a, b, 255.0),
                "psnr_y": metrics.psnr(ya, yb, 255.0), "ssim_y": metrics.ssim(ya, yb, 255.0),
                "spectral_db": metrics.spectral_error_db(ya, yb)}


class BicubicBaseline(Baseline):
    name = "bicubic"
    description = "bicubic 4x upsampling of the low-resolution image"

    def __call__(self, measurement):
        up = resample(tf.constant(measurement, tf.float32), SCALE, "bicubic").numpy()
        return np.clip(up, 0.0, 1.0)


# === Helpers ===


def resample(image, factor: float, kernel: str = "bicubic"):
    """[..., h, w, C] -> [..., round(factor h), round(factor w), C] with `kernel` (bicubic: Keys a = -0.5;
    lanczos: Lanczos-3), antialiased when shrinking (the kernel stretched by 1 / factor, as PIL does), half-pixel
    centres (a coarse pixel covers exactly the factor x factor fine pixels)."""
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.shape(image)
    flat = tf.reshape(image, tf.concat([[-1], shape[-3:]], axis=0))
    size = tf.cast(tf.round(tf.cast(shape[-3:-1], tf.float32) * factor), tf.int32)
    out = tf.image.resize(flat, size, method=_TF_METHOD[kernel], antialias=factor < 1)
    return tf.reshape(out, tf.concat([shape[:-3], size, shape[-1:]], axis=0))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """[H, W, C] -> [H, W, channels]: alpha dropped, grey replicated to RGB, or RGB reduced to luminance."""
    image = np.asarray(image, np.float32)
    if image.shape[-1] in (2, 4):
        image = image[..., :-1]
    if channels == 1:
        return readers.to_grayscale(image) if image.shape[-1] != 1 else image
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma Y in [16, 235] of an image [H, W, 3] (or grey [H, W, 1], as R = G = B) in [0, 1]."""
    rgb = np.asarray(rgb, np.float64)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return LUMA_OFFSET + rgb @ np.asarray(LUMA_WEIGHTS)


def embedded_color_images() -> list[tuple[str, np.ndarray]]:
    """scikit-image's embedded images in [0, 1] with their own channels (1 or 3): `sources.embedded_images`
    without the reduction to grey."""
    return sources.embedded_images(grayscale=False)


def image_size(path) -> tuple[int, int]:
    """(H, W) of an image file: from the header for PNG / JPEG (Pillow, no pixels decoded), by reading for TIFF
    (whose axes need the reader's axis rule)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return readers.read_image(path).shape[:2]
    try:
        from PIL import Image

        with Image.open(path) as opened:
            width, height = opened.size
        return int(height), int(width)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise InputError(f"{path}: cannot read the image header ({err})") from None


def _write_tiff(path, image):
    """A TIFF in the image's own dtype (RGB as photometric RGB), atomically."""
    import tifffile

    data = np.asarray(image)
    data = data[..., 0] if data.shape[-1] == 1 else data
    with io.atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, photometric="rgb" if data.ndim == 3 else "minisblack")
    return Path(path)


def _to_uint8(image):
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_image(image):
    image = np.asarray(image, np.float64)
    return image[..., None] if image.ndim == 2 else image


def _shave(image, border: int = SCALE):
    return image[border:-border, border:-border] if min(image.shape[:2]) > 2 * border + 11 else image
