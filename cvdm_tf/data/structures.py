"""Synthetic fluorescence structures on the SIM grid: the four BioSR kinds, drawn in physical units.

Every structure is a fluorophore density drawn in micrometres and sampled on a grid of pitch `pixel_size_um`
(default 0.0313 um, BioSR's SIM grid; sr-notes.md). The random draws depend only on the field of view in
um, never on the pixel count, so the same generator state gives the same structure at any pixel size: halve
the pixel and the structure spans twice the pixels.

How a structure is drawn:
  1. Objects as curves in um: line segments or quadratic Bezier arcs (filaments, rings, tubules), plus filled
     polygons for ER sheets.
  2. Each curve is sampled every quarter pixel and splatted bilinearly (anti-aliased) into a density image, with
     weight = line density x step / pixel area, so a pixel holds the mean density over its area.
  3. The density is blurred by a Gaussian whose FWHM is the physical width of the object, on a canvas padded by
     the blur's reach so that curves leaving the field of view are not dimmed at the border.
  4. Scaled to maximum 1 (float32).

The four kinds (sizes from the cell-biology literature; numbers per um^2 of field of view):

    kind           objects                                    width (FWHM)   other draws per call
    microtubules   0.15-0.6 worm-like chains, 4-20 um long,   25 nm          persistence 5-15 um
                   through the field of view
    f-actin        1-4 chains, 0.5-3 um long, part of them    7 nm           persistence 10-17 um,
                   aligned (stress-fibre-like), crossing                     aligned fraction 0-0.7
    ccps           0.4-2 rings of diameter 80-150 nm          coat 25-40 nm  (rings look hollow-ish)
    er             Voronoi network of 0.7-3 seeds per um^2:   50-100 nm      0-15 % of tubules missing,
                   three-way junctions, polygons 0.6-1.2 um                  0-3 sheets (filled polygons)
                   slightly curved tubules

Worm-like chains: nodes every 50 nm, the tangent angle a random walk with variance step / persistence, so
<cos(angle change over s)> = exp(-s / (2 persistence)): nearly straight over a few um when persistence ~ 10 um.
Every object has its own brightness (0.3-1), and densities vary per call, so images differ in crowding.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import Voronoi
from skimage.draw import polygon
from skimage.filters import gaussian

from cvdm_tf.errors import InputError

__all__ = ["STRUCTURES", "structure", "cell"]

STRUCTURES = ("ccps", "er", "microtubules", "f-actin")

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
# A Gaussian line profile of peak 1 and FWHM w carries sqrt(2 pi) sigma = 1.0645 w of density per um of length.
_LINE_MASS_PER_WIDTH = math.sqrt(2.0 * math.pi) * _FWHM_TO_SIGMA
_SAMPLES_PER_PIXEL = 4  # curve samples per pixel of length: dense enough for a smooth bilinear splat
_NODE_SPACING_UM = 0.05  # worm-like chain step, physical so that draws do not depend on the pixel size
_RING_NODES = 16  # a 150 nm ring drawn as 16 chords of 29 nm: smooth at 31 nm pixels
_ER_MARGIN_UM = 2.0  # Voronoi seeds this far outside the field, so border cells are complete
_ATTEMPTS = 8  # redraws when a field smaller than the structure's spacing comes out empty


class _Canvas:
    """A density image of the field of view, padded by the blur's reach, in physical coordinates (um).

    Pixel (i, j) of the field covers [i dx, (i + 1) dx) x [j dx, (j + 1) dx); its centre is at ((i + 0.5) dx, ...).
    """

    def __init__(self, shape, pixel_size_um, width_um):
        self.shape = shape
        self.pixel_size_um = pixel_size_um
        self.sigma_px = width_um * _FWHM_TO_SIGMA / pixel_size_um
        self.pad = int(math.ceil(4 * self.sigma_px)) + 1
        self.density = np.zeros((shape[0] + 2 * self.pad, shape[1] + 2 * self.pad))

    def _to_pixels(self, points_um):
        """(y, x) in um -> (row, col) on the padded canvas, pixel centres at integers."""
        return points_um / self.pixel_size_um - 0.5 + self.pad

    def curves(self, starts_um, ends_um, controls_um, brightness, width_um):
        """Splat quadratic Bezier curves (start, control, end) [N, 2] of peak density `brightness` [N].

        Steps: sample each curve every 1 / _SAMPLES_PER_PIXEL px of chord length; give every sample the density
        of its share of the curve (line mass per um x length / pixel area); splat bilinearly.
        """
        if len(starts_um) == 0:
            return
        lengths_um = np.hypot(*(ends_um - starts_um).T) + 1e-12
        counts = np.ceil(lengths_um / self.pixel_size_um * _SAMPLES_PER_PIXEL).astype(np.int64) + 1
        curve = np.repeat(np.arange(len(counts)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        t = ((np.arange(counts.sum()) - first + 0.5) / counts[curve])[:, None]
        points = (1 - t) ** 2 * starts_um[curve] + 2 * t * (1 - t) * controls_um[curve] + t**2 * ends_um[curve]
        mass = brightness * _LINE_MASS_PER_WIDTH * width_um * lengths_um / self.pixel_size_um**2
        self._splat(self._to_pixels(points), (mass / counts)[curve])

    def segments(self, starts_um, ends_um, brightness, width_um):
        """Straight segments: Bezier curves whose control point is the midpoint."""
        self.curves(starts_um, ends_um, (starts_um + ends_um) / 2, brightness, width_um)

    def fill(self, vertices_um, density):
        """Add `density` inside a polygon (vertices [N, 2] in um); pixels whose centre is inside are filled."""
        rows, cols = self._to_pixels(np.asarray(vertices_um)).T
        rr, cc = polygon(rows, cols, self.density.shape)
        self.density[rr, cc] += density

    def _splat(self, pixels, weights):
        """Bilinear splat of weighted points [N, 2] (row, col) into the canvas; points outside are dropped."""
        height, width = self.density.shape
        base = np.floor(pixels).astype(np.int64)
        frac = pixels - base
        flat = np.zeros(height * width)
        for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
            rows, cols = base[:, 0] + dr, base[:, 1] + dc
            share = (frac[:, 0] if dr else 1 - frac[:, 0]) * (frac[:, 1] if dc else 1 - frac[:, 1])
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
            flat += np.bincount(rows[inside] * width + cols[inside], share[inside] * weights[inside], height * width)
        self.density += flat.reshape(height, width)

    def image(self):
        """The density blurred to the objects' width and cropped to the field of view."""
        blurred = gaussian(self.density, sigma=self.sigma_px, mode="constant", truncate=4.0)
        return blurred[self.pad : self.pad + self.shape[0], self.pad : self.pad + self.shape[1]]


def _worm_like_chains(rng, centres_um, angles, lengths_um, persistence_um):
    """Worm-like chains centred on `centres_um` [N, 2], as segments (starts, ends, chain index).

    Steps: nodes every _NODE_SPACING_UM; tangent angle = start angle + a random walk of variance
    step / persistence; the middle node is moved onto the centre; segments past a chain's length are dropped.
    """
    count = len(centres_um)
    nodes = np.ceil(lengths_um / _NODE_SPACING_UM).astype(np.int64) + 1
    turns = rng.normal(0.0, math.sqrt(_NODE_SPACING_UM / persistence_um), (count, nodes.max() - 1))
    tangent = angles[:, None] + np.cumsum(turns, axis=1) - turns[:, :1]
    steps = _NODE_SPACING_UM * np.stack([np.sin(tangent), np.cos(tangent)], axis=-1)
    points = np.concatenate([np.zeros((count, 1, 2)), np.cumsum(steps, axis=1)], axis=1)
    points += centres_um[:, None, :] - points[np.arange(count), nodes // 2][:, None, :]
    keep = np.arange(nodes.max() - 1)[None, :] < (nodes - 1)[:, None]
    chain = np.broadcast_to(np.arange(count)[:, None], keep.shape)
    return points[:, :-1][keep], points[:, 1:][keep], chain[keep]


def _uniform_points(rng, count, field_um, margin_um=0.0):
    """`count` points (y, x) in um, uniform over the field of view grown by `margin_um` on every side."""
    low = (-margin_um, -margin_um)
    high = (field_um[0] + margin_um, field_um[1] + margin_um)
    return rng.uniform(low, high, (count, 2))


def _count(rng, per_um2, field_um, margin_um=0.0, minimum=1):
    """A Poisson number of objects for a density per um^2 over the field grown by `margin_um`, at least `minimum`."""
    area_um2 = (field_um[0] + 2 * margin_um) * (field_um[1] + 2 * margin_um)
    return max(minimum, int(rng.poisson(per_um2 * area_um2)))


def _filaments(rng, shape, pixel_size_um, field_um, per_um2, lengths_um, persistence_um, width_um, aligned=0.0):
    """Worm-like chains through the field of view; a fraction `aligned` shares one direction (+- 9 degrees)."""
    count = _count(rng, per_um2, field_um)
    centres = _uniform_points(rng, count, field_um)
    angles = rng.uniform(0.0, 2 * math.pi, count)
    bundled = rng.random(count) < aligned
    angles = np.where(bundled, rng.uniform(0.0, math.pi) + rng.normal(0.0, 0.15, count), angles)
    brightness = rng.uniform(0.4, 1.0, count)
    starts, ends, chain = _worm_like_chains(rng, centres, angles, rng.uniform(*lengths_um, count), persistence_um)
    canvas = _Canvas(shape, pixel_size_um, width_um)
    canvas.segments(starts, ends, brightness[chain], width_um)
    return canvas.image()


def _microtubules(rng, shape, pixel_size_um, field_um):
    return _filaments(
        rng, shape, pixel_size_um, field_um,
        per_um2=rng.uniform(0.15, 0.6), lengths_um=(4.0, 20.0), persistence_um=rng.uniform(5.0, 15.0),
        width_um=0.025,
    )


def _f_actin(rng, shape, pixel_size_um, field_um):
    return _filaments(
        rng, shape, pixel_size_um, field_um,
        per_um2=rng.uniform(1.0, 4.0), lengths_um=(0.5, 3.0), persistence_um=rng.uniform(10.0, 17.0),
        width_um=0.007, aligned=rng.uniform(0.0, 0.7),
    )


def _ccps(rng, shape, pixel_size_um, field_um):
    """Clathrin-coated pits: rings of diameter 80-150 nm drawn as 16 chords, coat width 25-40 nm per call."""
    count = _count(rng, rng.uniform(0.4, 2.0), field_um)
    centres = _uniform_points(rng, count, field_um)
    radii = rng.uniform(0.04, 0.075, count)
    brightness = rng.uniform(0.3, 1.0, count)
    coat_um = rng.uniform(0.025, 0.04)
    angle = rng.uniform(0.0, 2 * math.pi, count)[:, None] + np.linspace(0.0, 2 * math.pi, _RING_NODES + 1)
    nodes = centres[:, None, :] + radii[:, None, None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    canvas = _Canvas(shape, pixel_size_um, coat_um)
    canvas.segments(
        nodes[:, :-1].reshape(-1, 2), nodes[:, 1:].reshape(-1, 2), np.repeat(brightness, _RING_NODES), coat_um
    )
    return canvas.image()


def _er(rng, shape, pixel_size_um, field_um):
    """Endoplasmic reticulum: the edges of a Voronoi diagram (three-way junctions, loops) plus a few sheets."""
    seeds_per_um2 = rng.uniform(0.7, 3.0)
    # Qhull needs at least 4 seeds for a 2-D Voronoi diagram (expected count >= 11 even for a tiny field).
    count = _count(rng, seeds_per_um2, field_um, _ER_MARGIN_UM, minimum=4)
    seeds = _uniform_points(rng, count, field_um, _ER_MARGIN_UM)
    width_um = rng.uniform(0.05, 0.1)
    missing = rng.uniform(0.0, 0.15)
    sheets = int(rng.integers(0, 4))
    diagram = Voronoi(seeds)
    ridges = np.array([r for r in diagram.ridge_vertices if min(r) >= 0], np.int64).reshape(-1, 2)
    starts, ends = diagram.vertices[ridges[:, 0]], diagram.vertices[ridges[:, 1]]
    low, high = -_ER_MARGIN_UM, np.array(field_um) + _ER_MARGIN_UM
    near = np.all((starts > low) & (starts < high) & (ends > low) & (ends < high), axis=1)
    starts, ends = starts[near], ends[near]
    # Tubules bow sideways by ~10 % of their length; a few are missing (open ends, bigger polygons).
    chord = ends - starts
    normal = np.stack([-chord[:, 1], chord[:, 0]], axis=1)
    controls = (starts + ends) / 2 + rng.normal(0.0, 0.1, (len(chord), 1)) * normal
    keep = rng.random(len(chord)) >= missing
    canvas = _Canvas(shape, pixel_size_um, width_um)
    canvas.curves(starts[keep], ends[keep], controls[keep], rng.uniform(0.6, 1.0, len(chord))[keep], width_um)
    # Sheets: whole Voronoi cells of seeds inside the field, filled at tubule-like density.
    inside = np.all((seeds >= 0) & (seeds < np.array(field_um)), axis=1)
    regions = [diagram.regions[diagram.point_region[i]] for i in np.flatnonzero(inside)]
    regions = [r for r in regions if r and min(r) >= 0]
    for index in rng.permutation(len(regions))[: min(sheets, len(regions))]:
        canvas.fill(diagram.vertices[regions[index]], rng.uniform(0.4, 0.8))
    return canvas.image()


_GENERATORS = {"ccps": _ccps, "er": _er, "microtubules": _microtubules, "f-actin": _f_actin}


def _shape(size):
    """An int or (height, width) as a validated (height, width)."""
    shape = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise InputError(f"size must be an int >= 1 or (height, width), got {size!r}")
    return int(shape[0]), int(shape[1])


def structure(kind, size, rng, pixel_size_um=0.0313):
    """One synthetic fluorescence structure: a non-negative fluorophore density, scaled to maximum 1.

    Steps: draw the objects of `kind` in um over the field of view size x pixel_size_um (module docstring),
    render them (splat, blur to their width), scale to maximum 1. If the field comes out empty (only possible
    when it is smaller than the structure's spacing, e.g. a few pixels), redraw, up to 8 times.

    Args:
      kind: str. One of STRUCTURES: "ccps", "er", "microtubules", "f-actin".
      size: int or (int, int). Image size in pixels, square or (height, width).
      rng: numpy.random.Generator. The only source of randomness: the result is a pure function of its state.
      pixel_size_um: float. Grid pitch in um (default 0.0313, BioSR's SIM grid).

    Returns:
      numpy float32 [size, size] (or [height, width]), values in [0, 1], maximum 1 (all zeros only if 8 draws
      were empty).
    """
    if kind not in _GENERATORS:
        raise InputError(f"unknown structure {kind!r}; expected one of {', '.join(STRUCTURES)}")
    shape = _shape(size)
    if not isinstance(pixel_size_um, (int, float)) or not pixel_size_um > 0:
        raise InputError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    field_um = (shape[0] * pixel_size_um, shape[1] * pixel_size_um)
    image = np.zeros(shape)
    for _ in range(_ATTEMPTS):
        image = _GENERATORS[kind](rng, shape, float(pixel_size_um), field_um).clip(0.0, None)
        if image.max() > 0:
            image = image / image.max()
            break
    return image.astype(np.float32)


def cell(size, rng, kinds=STRUCTURES, pixel_size_um=0.0313):
    """A structure of a random kind.

    Args:
      size: int or (int, int). Image size in pixels.
      rng: numpy.random.Generator. Draws the kind, then the structure.
      kinds: sequence of str. The kinds to choose from, uniformly (default all of STRUCTURES).
      pixel_size_um: float. Grid pitch in um (default 0.0313).

    Returns:
      (kind, image): the kind drawn, and `structure(kind, size, rng, pixel_size_um)`.
    """
    kinds = tuple(kinds)
    if not kinds:
        raise InputError("kinds must name at least one structure")
    unknown = [k for k in kinds if k not in _GENERATORS]
    if unknown:
        raise InputError(f"unknown structure {unknown[0]!r}; expected one of {', '.join(STRUCTURES)}")
    kind = kinds[int(rng.integers(len(kinds)))]
    return kind, structure(kind, size, rng, pixel_size_um)
