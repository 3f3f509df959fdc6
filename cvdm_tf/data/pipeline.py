"""tf.data pipelines that build training pairs on the fly: banks of whole examples -> random crops -> pairs.

    bank (in memory, or files read on demand) -> random crop (every array of the example at its own grid; as
        large as `task.field_size` asks) -> flips and quarter turns -> task.pair (forward physics, noise,
        normalisation) -> batch -> prefetch

Element i of a pipeline is a pure function of (seed, i): stateless random ops pick the example, the crop, the
augmentation and the noise. So a parallel map is still reproducible, and a resumed run that starts at element
step * batch_size sees exactly the data an uninterrupted run would have seen.

An example is a dict of arrays [H_a, W_a, C_a]; its arrays share a field of view on grids that differ by whole
factors, the `divisors` of the task (1: the output grid; 2: e.g. a widefield image on the half grid). A crop of
`size` output pixels takes `size / divisor` pixels of each array at the same place.

Two banks with one interface (`count`, `random_crop(size, seed)`):
    InMemoryBank   every example in one zero-padded tensor per array: fastest, for small sets (the embedded
                   images, simulated cells);
    FileBank       examples listed as files, read by a loader only when a crop needs them (in parallel,
                   `tf.numpy_function`): memory stays flat whatever the folder's size.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


def _crop_origin(sizes, index, size: int, step: int, seed):
    """Top-left corner (on the output grid, a multiple of `step`) of a random [size, size] crop of example
    `index`, whose output-grid size is sizes[index]."""
    limit = (sizes[index] - size) // step + 1
    top = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(seed, 1),
                                      maxval=limit[0], dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(seed, 2),
                                       maxval=limit[1], dtype=tf.int32)
    return top * step, left * step


def _pick(count: int, seed):
    return tf.random.stateless_uniform([], seed=seed, maxval=count, dtype=tf.int32)


class InMemoryBank:
    """Examples of different sizes, each array in one zero-padded tensor [N, H_max, W_max, C] plus the sizes.

    Args:
        examples: list of dict name -> array [H, W, C] (the same names in every example).
        divisors: dict name -> int, the grid factor of each array (default 1 for all).
    """

    def __init__(self, examples: Sequence[dict], divisors: dict | None = None):
        if not examples:
            raise ValueError("a bank needs at least one example")
        names = list(examples[0])
        self.divisors = {name: int((divisors or {}).get(name, 1)) for name in names}
        self.step = max(self.divisors.values())
        self.arrays = {}
        for name in names:
            height = max(example[name].shape[0] for example in examples)
            width = max(example[name].shape[1] for example in examples)
            channels = examples[0][name].shape[2]
            padded = np.zeros((len(examples), height, width, channels), np.float32)
            for k, example in enumerate(examples):
                array = example[name]
                padded[k, : array.shape[0], : array.shape[1]] = array
            self.arrays[name] = tf.constant(padded)
        reference = names[0]
        self.sizes = tf.constant([np.array(example[reference].shape[:2]) * self.divisors[reference]
                                  for example in examples], tf.int32)
        self.count = len(examples)

    def random_crop(self, size: int, seed) -> dict:
        """{name: [size / divisor, size / divisor, C]} of a random example, uniform over examples then positions."""
        k = _pick(self.count, seed)
        top, left = _crop_origin(self.sizes, k, size, self.step, seed)
        return {name: tf.slice(array, [k, top // self.divisors[name], left // self.divisors[name], 0],
                               [1, size // self.divisors[name], size // self.divisors[name], -1])[0]
                for name, array in self.arrays.items()}


class FileBank:
    """Examples read from files only when a crop is taken from them, so memory does not grow with the data set.

    Args:
        sizes: list of (H, W): each example's size on the output grid (from file headers: no pixel is read here).
        load: callable(index) -> dict name -> array [H_a, W_a, C_a] float32: reads example `index`.
        channels: dict name -> C_a (static, for the graph).
        divisors: dict name -> grid factor (default 1).
    """

    def __init__(self, sizes: Sequence, load: Callable[[int], dict], channels: dict, divisors: dict | None = None):
        self.count = len(sizes)
        if not self.count:
            raise ValueError("a bank needs at least one example")
        self.sizes = tf.constant(np.asarray(sizes, np.int32).reshape(-1, 2))
        self.load = load
        self.channels = dict(channels)
        self.divisors = {name: int((divisors or {}).get(name, 1)) for name in channels}
        self.step = max(self.divisors.values())

    def _read_crop(self, index, top, left, size):
        example = self.load(int(index))
        return [np.ascontiguousarray(
                    example[name][top // d: (top + size) // d, left // d: (left + size) // d], np.float32)
                for name, d in self.divisors.items()]

    def random_crop(self, size: int, seed) -> dict:
        k = _pick(self.count, seed)
        top, left = _crop_origin(self.sizes, k, size, self.step, seed)
        if len(self.divisors) == 1:  # numpy_function unpacks a one-element list along the array's first axis
            crops = [tf.numpy_function(lambda k, t, l: self._read_crop(k, t, l, size)[0], [k, top, left],
                                       tf.float32, stateful=False)]
        else:
            crops = tf.numpy_function(lambda k, t, l: self._read_crop(k, t, l, size), [k, top, left],
                                      [tf.float32] * len(self.divisors), stateful=False)
        return {name: tf.ensure_shape(crop, [size // d, size // d, self.channels[name]])
                for (name, d), crop in zip(self.divisors.items(), crops)}


def _augment(crop: dict, seed) -> dict:
    """The same random flip and quarter turn for every array of a crop (the physics is invariant to both)."""
    turns = tf.random.stateless_uniform([], seed=seed, maxval=4, dtype=tf.int32)
    flip = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5

    def one(array):
        array = tf.image.rot90(array, k=turns)
        return tf.cond(flip, lambda: tf.reverse(array, axis=[1]), lambda: array)

    return {name: one(array) for name, array in crop.items()}


def make_dataset(task, bank, size: int, batch_size: int, seed: int, start: int = 0,
                 augment: bool = True, example_seeds: bool = False, shard=(0, 1), split: int = 1) -> tf.data.Dataset:
    """An endless dataset of (y, x) batches of `task.pair`s of `size` px crops of `bank`; element i depends only
    on (seed, i). `start` skips to element `start`.

    Args:
        example_seeds: bool. Elements are (y, x, seeds): each example's own key [2] int64, a pure function of
            (seed, i) too, for the random draws of the training step (t and eps), so that they travel with the
            example to whichever replica trains on it.
        shard: (k, n). One of n input pipelines of a distributed run (`cvdm_tf.distribute`): of every block of
            `batch_size` consecutive elements (a global batch), only the k-th contiguous part of `batch_size / n`
            elements, so the n pipelines together yield each global batch once.
        split: int. That part comes as `split` consecutive batches (one per replica the pipeline feeds).
    """
    k, n = shard
    part = batch_size // n
    field = task.field_size(size)  # what `task.pair` makes a size x size pair from

    def element(j):
        i = start + j // part * batch_size + k * part + j % part  # the j-th element of this shard
        key = tf.stack([tf.constant(seed, tf.int64), i])
        crop = bank.random_crop(field, tf.random.experimental.stateless_fold_in(key, 0))
        if augment:
            crop = _augment(crop, tf.random.experimental.stateless_fold_in(key, 1))
        pair = task.pair(crop, tf.random.experimental.stateless_fold_in(key, 2))
        return (*pair, tf.random.experimental.stateless_fold_in(key, 3)) if example_seeds else pair

    dataset = tf.data.Dataset.range(0, np.iinfo(np.int64).max - start)
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(part // split, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
