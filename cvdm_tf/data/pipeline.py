"""tf.data pipelines that build training pairs on the fly from ground-truth images.

    decode -> grayscale -> [0, 1] -> phase (scaled over the whole image) -> random crop, flips, rotations
           -> forward physics (Fresnel pair) -> noise -> normalisation -> batch -> prefetch

Element i of a pipeline is a pure function of (seed, i): stateless random ops pick the image, the crop, the
augmentation and the noise. So a parallel map is still reproducible, and a resumed run that starts at element
step * batch_size sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cvdm_tf.data import sources
from cvdm_tf.data.phantoms import cell_phantom
from cvdm_tf.errors import InputError

TRAINING_PHANTOM_SEED = 2024  # the benchmarks test on phantoms drawn with seed 1234


def load_ground_truth(data_config, min_size: int, warn=None) -> list[tuple[str, np.ndarray]]:
    """The ground-truth images of a data config as (name, [H, W] float32): phase in radians for QPI.

    `source = ""` takes the images embedded in scikit-image; otherwise a folder (searched recursively), an image,
    or a .npy/.npz stack. Integer images are scaled by their dtype's range, float images by their own min/max,
    then to [0, phase_max] over the whole image (`phase_scaling = "image"`; "crop" leaves them in [0, 1] and
    scales every crop to [0, phase_max] instead).

    Images smaller than `min_size` (the training crop) on either side are skipped, each named in one line through
    `warn(message)`; an InputError if none is left (or if a file is unreadable or has NaN/Inf pixels).
    """
    if data_config.source:
        items = [(name, sources.to_unit_range(sources.to_grayscale(image), dtype)[..., 0])
                 for name, image, dtype in sources.iter_source_images(data_config.source, with_dtype=True)]
    else:
        items = [(name, image[..., 0]) for name, image in sources.embedded_images()]
    usable = [(name, image) for name, image in items if min(image.shape) >= min_size]
    where = data_config.source or "the embedded images"
    if not usable:
        sizes = ", ".join(f"{name} {image.shape[0]} x {image.shape[1]}" for name, image in items[:5])
        raise InputError(f"{where}: no image is at least {min_size} x {min_size} pixels, the training crop size "
                         f"(data.image_size / --image-size); found {sizes}{' ...' if len(items) > 5 else ''}")
    if warn is not None:
        for name, image in items:
            if min(image.shape) < min_size:
                warn(f"skipping {name} ({image.shape[0]} x {image.shape[1]}): smaller than the "
                     f"{min_size} x {min_size} training crop")
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


class ImageBank:
    """Images of different sizes in one zero-padded tensor [N, H_max, W_max] plus their sizes, for crops in-graph."""

    def __init__(self, images: list[np.ndarray]):
        height = max(image.shape[0] for image in images)
        width = max(image.shape[1] for image in images)
        bank = np.zeros((len(images), height, width), np.float32)
        for k, image in enumerate(images):
            bank[k, : image.shape[0], : image.shape[1]] = image
        self.images = tf.constant(bank)
        self.sizes = tf.constant([image.shape[:2] for image in images], tf.int32)
        self.count = len(images)

    def random_crop(self, size: int, seed):
        """A [size, size] crop of a random image, uniform over images then positions."""
        k = tf.random.stateless_uniform([], seed=seed, maxval=self.count, dtype=tf.int32)
        limit = self.sizes[k] - size + 1
        seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
        top = tf.random.stateless_uniform([], seed=seed2, maxval=limit[0], dtype=tf.int32)
        seed3 = tf.random.experimental.stateless_fold_in(seed, 2)
        left = tf.random.stateless_uniform([], seed=seed3, maxval=limit[1], dtype=tf.int32)
        return tf.slice(self.images, [k, top, left], [1, size, size])[0]


def _augment(crop, seed):
    """Random flips and quarter turns (the physics is invariant to both)."""
    turns = tf.random.stateless_uniform([], seed=seed, maxval=4, dtype=tf.int32)
    crop = tf.image.rot90(crop[..., None], k=turns)[..., 0]
    flip = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
    return tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)


def make_dataset(task, images: list[np.ndarray], data_config, batch_size: int, seed: int, start: int = 0,
                 augment: bool | None = None) -> tf.data.Dataset:
    """An endless dataset of (y, x) batches; element i depends only on (seed, i). `start` skips to element start."""
    bank = ImageBank(images)
    size = data_config.image_size
    augment = data_config.augment if augment is None else augment
    phase_max = data_config.phase_max
    per_crop = data_config.phase_scaling == "crop"

    def element(i):
        key = tf.stack([tf.constant(seed, tf.int64), i])
        crop = bank.random_crop(size, tf.random.experimental.stateless_fold_in(key, 0))
        if augment:
            crop = _augment(crop, tf.random.experimental.stateless_fold_in(key, 1))
        if per_crop:
            low, high = tf.reduce_min(crop), tf.reduce_max(crop)
            crop = (crop - low) / tf.maximum(high - low, 1e-6) * phase_max
        return task.pair(crop, tf.random.experimental.stateless_fold_in(key, 2))

    dataset = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
