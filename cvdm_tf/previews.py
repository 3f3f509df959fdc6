"""Preview images for people, the same for training and inference: panels side by side, each titled, in a
colour map, with a colour bar labelled with its low / high values.

    inference   input (first channel, grey) | mean (viridis) | std (magma) | schedule (cividis)
    training    condition | sample mean | truth | std | schedule       (every `preview_every` steps, EMA weights)

A panel's range is robust (the 0.5 / 99.5 percentiles), so a few hot pixels do not flatten it; a label says
"<" or ">" where values beyond it are shown saturated. Small images are enlarged by a whole factor (no blur),
large ones shrunk. Text is drawn by Pillow with its built-in scalable font.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvdm_tf import io

# Colour maps as anchors evenly spaced on [0, 1] (sampled from matplotlib's perceptually uniform maps).
COLORMAPS = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "magma": [(0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)],
    "cividis": [(0, 34, 78), (64, 77, 107), (124, 123, 120), (188, 175, 111), (255, 234, 70)],
}
FONT_SIZE = 13
MARGIN, BAR_HEIGHT = 6, 10


def _font():
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


def colorize(values: np.ndarray, low: float, high: float, cmap: str) -> np.ndarray:
    """float [H, W] -> uint8 RGB [H, W, 3] through a colour map scaled to [low, high]."""
    anchors = np.array(COLORMAPS[cmap], np.float64)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values, np.float64)
    scaled = np.clip(scaled, 0.0, 1.0) * (len(anchors) - 1)
    grid = np.arange(len(anchors))
    rgb = np.stack([np.interp(scaled, grid, anchors[:, k]) for k in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def _format(value: float, digits: int = 3) -> str:
    text = f"{value:.{digits}g}"
    return "0" if text in ("-0", "0") else text.replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def _display_size(height: int, width: int, smallest: int = 128, largest: int = 384) -> tuple[int, int]:
    """Panels are enlarged by a whole factor up to about `smallest` px, or shrunk to `largest` px (long side)."""
    side = max(height, width)
    if side < smallest:
        factor = max(1, min(smallest // side, 16))
        return height * factor, width * factor
    if side > largest:
        return max(1, round(height * largest / side)), max(1, round(width * largest / side))
    return height, width


def panel(values: np.ndarray, title: str, cmap: str) -> np.ndarray:
    """Title, the image in its colour map (an [H, W, 3] image: in its own colours, one range for all three), a
    colour bar and its low / high labels, on white: uint8 RGB."""
    from PIL import Image, ImageDraw
    from skimage.transform import resize

    values = np.asarray(values, np.float64)
    if values.ndim == 3 and values.shape[-1] != 3:
        values = values[..., 0]
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    # 3 significant digits, more where a narrow range needs them to tell the two ends apart.
    digits = next((d for d in range(3, 7) if _format(low, d) != _format(high, d)), 3)
    low_text = ("<" if values.min() < low else "") + _format(low, digits)
    high_text = (">" if values.max() > high else "") + _format(high, digits)
    height, width = values.shape[:2]
    dh, dw = _display_size(height, width)
    if dh > height:  # enlarge: whole pixels, no blur
        shown = np.repeat(np.repeat(values, dh // height, axis=0), dw // width, axis=1)
    elif dh < height:
        shown = resize(values, (dh, dw) + values.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
    else:
        shown = values
    font = _font()
    text_width = lambda text: int(np.ceil(font.getlength(text)))  # noqa: E731
    text_height = FONT_SIZE + 2
    panel_w = max(shown.shape[1], text_width(title), text_width(low_text) + text_width(high_text) + 12) + 2 * MARGIN
    title_h = text_height + 2 * MARGIN
    bar_top = title_h + shown.shape[0] + MARGIN
    panel_h = bar_top + BAR_HEIGHT + 4 + text_height + MARGIN
    canvas = np.full((panel_h, panel_w, 3), 255, np.uint8)
    left = (panel_w - shown.shape[1]) // 2
    if shown.ndim == 3:  # colour: the three channels scaled alike, the bar in grey
        cmap = "gray"
        scaled = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
        picture = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        picture = colorize(shown, low, high, cmap)
    canvas[title_h:title_h + shown.shape[0], left:left + shown.shape[1]] = picture
    bar_w = panel_w - 2 * MARGIN
    ramp = np.tile(np.linspace(low, high, bar_w), (BAR_HEIGHT, 1))
    canvas[bar_top:bar_top + BAR_HEIGHT, MARGIN:MARGIN + bar_w] = colorize(ramp, low, high, cmap)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.rectangle([MARGIN - 1, bar_top - 1, MARGIN + bar_w, bar_top + BAR_HEIGHT], outline=(0, 0, 0))
    draw.text((MARGIN, MARGIN), title, fill=(0, 0, 0), font=font)
    label_top = bar_top + BAR_HEIGHT + 3
    draw.text((MARGIN, label_top), low_text, fill=(0, 0, 0), font=font)
    draw.text((MARGIN + bar_w - text_width(high_text), label_top), high_text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def strip(panels: list[tuple[str, np.ndarray, str]]) -> np.ndarray:
    """(title, values [H, W], colour map) panels side by side on a light grey gutter: uint8 RGB."""
    drawn = [panel(values, title, cmap) for title, values, cmap in panels]
    height = max(p.shape[0] for p in drawn)
    gap = np.full((height, 4, 3), 200, np.uint8)
    row = []
    for image in drawn:
        padded = np.full((height, image.shape[1], 3), 255, np.uint8)
        padded[: image.shape[0]] = image
        row += [padded, gap]
    return np.concatenate(row[:-1], axis=1)


def _picture(values, colour: bool = True) -> np.ndarray:
    """What a panel shows of an image [H, W] or [H, W, C]: 3 channels in colour (with `colour`), else the first
    channel."""
    values = np.asarray(values)
    if values.ndim == 3:
        return values if colour and values.shape[-1] == 3 else values[..., 0]
    return values


def _magnitude(values) -> np.ndarray:
    """A map [H, W] of a per-channel map [H, W, C]: the mean over the channels."""
    values = np.asarray(values)
    return values.mean(axis=-1) if values.ndim == 3 else values


def _is_colour(condition, result) -> bool:
    """A 3-channel condition is a colour image when the result has 3 channels too (QPI's 3 condition channels,
    an intensity pair and the TIE estimate, are not)."""
    return np.shape(condition)[-1] == 3 and np.ndim(result) == 3 and np.shape(result)[-1] == 3


# Panel titles of the point estimates (`cvdm_tf.config.ESTIMATES`).
ESTIMATE_TITLES = {"mean": "mean", "median": "median", "mean_network": "mean network"}


def preview_image(condition: np.ndarray, mean: np.ndarray, std: np.ndarray, schedule: np.ndarray,
                  unit: str = "", estimate: str = "mean") -> np.ndarray:
    """The inference preview: input (first channel, or colour) | estimate | std | schedule. Each [H, W] or
    [H, W, C]; 3-channel images are shown in colour, std and schedule of several channels averaged over them.
    `mean` is the point estimate, titled by `estimate` (the samples' "mean", "median" or "mean_network")."""
    suffix = f" [{unit}]" if unit else ""
    colour = _is_colour(condition, mean)
    std_title = "std" + (" (channel mean)" if np.ndim(std) == 3 and np.shape(std)[-1] > 1 else "")
    return strip([("input" if colour else "input ch 1", _picture(condition, colour), "gray"),
                  (ESTIMATE_TITLES[estimate] + suffix, _picture(mean), "viridis"),
                  (std_title + suffix, _magnitude(std), "magma"),
                  ("schedule", _magnitude(schedule), "cividis")])


def write_preview(path: Path, sampler, config, batch):
    """The training preview of the first example of `batch` (network units), with the EMA weights."""
    from cvdm_tf.model import ema_weights

    y, x = batch
    with ema_weights(sampler.model):
        out = sampler(y[:1], steps=config.sampler.steps, samples=2, seed=0, method=config.sampler.method)
    colour = _is_colour(y[0], x[0])
    io.write_png(path, strip([("condition", _picture(y[0].numpy(), colour), "gray"),
                              ("sample mean", _picture(out["mean"][0].numpy()), "viridis"),
                              ("truth", _picture(x[0].numpy()), "viridis"),
                              ("std", _magnitude(out["std"][0].numpy()), "magma"),
                              ("schedule", _magnitude(out["schedule"][0].numpy()), "cividis")]))
