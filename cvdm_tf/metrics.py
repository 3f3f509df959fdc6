"""Image-quality metrics of the paper (appendix G) and the uncertainty checks.

Every function takes numpy images, `[H, W]` or `[H, W, C]`, and returns a python float (or a dict of floats).
Nothing here touches TensorFlow: the metrics run on evaluation outputs, and the tests check them against
`tf.image.ssim` / `tf.image.ssim_multiscale` and scikit-image as independent implementations.

Notation (docs/cvdm-math.md, section 7):
    MAE      mean |a - b|
    PSNR     10 log10(data_range^2 / MSE)
    SSIM     Wang et al. 2004: 11x11 gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03
    MS-SSIM  Wang et al. 2003: five scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    k_c      decorrelation cut-off frequency, normalised to Nyquist (Descloux et al. 2019)
    P(k)     radially averaged power spectrum, |k| normalised to Nyquist; spectral error mean |10 log10 P_a / P_b|

References:
    Wang, Bovik, Sheikh, Simoncelli. Image quality assessment: from error visibility to structural
        similarity. IEEE TIP 13(4), 600-612 (2004).
    Wang, Simoncelli, Bovik. Multiscale structural similarity for image quality assessment.
        37th Asilomar Conference on Signals, Systems and Computers (2003).
    Descloux, Grussmayer, Radenovic. Parameter-free image resolution estimation based on decorrelation
        analysis. Nature Methods 16, 918-924 (2019). Reference code: github.com/Ades91/ImDecorr.
"""

import warnings

import numpy as np
import scipy.signal
import scipy.special
import scipy.stats
import skimage.metrics

from cvdm_tf.errors import InputError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# === Input checks ===


def _as_image(image, name):
    image = np.asarray(image, dtype=np.float64)
    if image.ndim not in (2, 3):
        raise InputError(f"{name}: expected an image [H, W] or [H, W, C], got shape {image.shape}")
    return image


def _as_pair(a, b):
    a, b = _as_image(a, "a"), _as_image(b, "b")
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _with_channels(image):
    return image[..., None] if image.ndim == 2 else image


# === Pixel-wise metrics ===


def offset_free(a, b):
    """Subtract each image's own mean, per channel.

    A phase image from QPI is known only up to a constant, so prediction and truth are compared after
    removing each one's mean.

    Args:
        a: array `[H, W]` or `[H, W, C]`. first image.
        b: array of the same shape. second image.

    Returns:
        `(a - mean(a), b - mean(b))`, means taken over the pixels of each channel, float64.
    """
    a, b = _as_pair(a, b)
    return a - a.mean(axis=(0, 1)), b - b.mean(axis=(0, 1))


def mae(a, b):
    """Mean absolute error, mean |a - b| over all pixels and channels.

    Args:
        a: array `[H, W]` or `[H, W, C]`. prediction.
        b: array of the same shape. reference.

    Returns:
        float.
    """
    a, b = _as_pair(a, b)
    return float(np.mean(np.abs(a - b)))


def psnr(a, b, data_range):
    """Peak signal-to-noise ratio in dB, `10 log10(data_range^2 / MSE)` (skimage).

    Args:
        a: array `[H, W]` or `[H, W, C]`. prediction.
        b: array of the same shape. reference.
        data_range: float. the span of possible values (max - min), e.g. 1.0 for images in [0, 1].

    Returns:
        float; `inf` for identical images.
    """
    a, b = _as_pair(a, b)
    if np.array_equal(a, b):
        return float("inf")  # skimage would divide by zero and warn
    return float(skimage.metrics.peak_signal_noise_ratio(b, a, data_range=data_range))


def ssim(a, b, data_range):
    """Structural similarity with the settings of Wang et al. (2004), via skimage.

    Settings: gaussian weights with sigma 1.5 truncated to an 11x11 window, K1 = 0.01, K2 = 0.03, population
    (not sample) covariances, the mean taken over the pixels whose window lies inside the image. These are
    the settings of `tf.image.ssim`, so the two agree. Channels are averaged.

    Args:
        a: array `[H, W]` or `[H, W, C]`, both sides at least 11 pixels. prediction.
        b: array of the same shape. reference.
        data_range: float. the span of possible values (max - min).

    Returns:
        float in [-1, 1].
    """
    a, b = _as_pair(a, b)
    if min(a.shape[:2]) < SSIM_FILTER_SIZE:
        raise InputError(f"ssim needs images of at least {SSIM_FILTER_SIZE} pixels a side, got {a.shape}")
    return float(
        skimage.metrics.structural_similarity(
            a,
            b,
            data_range=data_range,
            gaussian_weights=True,
            sigma=SSIM_FILTER_SIGMA,
            use_sample_covariance=False,
            K1=SSIM_K1,
            K2=SSIM_K2,
            channel_axis=-1 if a.ndim == 3 else None,
        )
    )


# === MS-SSIM ===


def _gaussian_taps(size, sigma):
    """1-D taps whose outer product is MATLAB's fspecial('gaussian'), as in tf.image.ssim."""
    coords = np.arange(size) - (size - 1) / 2.0
    taps = np.exp(-(coords**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(image, taps):
    """Separable correlation of `[H, W, C]` with `taps`, 'valid' region only (as tf's VALID conv)."""
    k = taps.size
    rows = np.lib.stride_tricks.sliding_window_view(image, k, axis=0) @ taps
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ taps


def _ssim_and_cs(a, b, data_range, taps):
    """Per-channel mean SSIM and mean contrast-structure term of `[H, W, C]` images."""
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_sum = _filter_valid(a * a + b * b, taps) - mu_a**2 - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    luminance = (2.0 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    cs = (2.0 * cov + c2) / (var_sum + c2)
    return (luminance * cs).mean(axis=(0, 1)), cs.mean(axis=(0, 1))


def _halve(image):
    """2x2 average pooling; an odd side is first padded by repeating its last row/column (as tf does)."""
    pad = [(0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)]
    image = np.pad(image, pad, mode="symmetric")
    h, w, c = image.shape
    return image.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def ms_scales(shape, filter_size=SSIM_FILTER_SIZE, max_scales=len(MS_SSIM_WEIGHTS)):
    """How many MS-SSIM scales an image of this shape supports.

    Scale k has sides ceil(side / 2^k) (odd sides are padded before halving); every scale needs sides of at
    least `filter_size` for one full gaussian window.

    Args:
        shape: tuple. image shape, `(H, W)` or `(H, W, C)`.
        filter_size: int. gaussian window size.
        max_scales: int. upper bound (the five scales of Wang et al. 2003).

    Returns:
        int in [0, max_scales].
    """
    side, scales = min(shape[:2]), 0
    while scales < max_scales and side >= filter_size:
        scales += 1
        side = -(-side // 2)
    return scales


def ms_ssim(a, b, data_range):
    """Multi-scale SSIM (Wang et al. 2003) with five scales and the standard weights.

    Per scale j: contrast-structure cs_j (and at the coarsest scale the full SSIM, luminance included) is
    computed as in `ssim` (11x11 gaussian window, sigma 1.5, valid region), then the image is halved by 2x2
    averaging. MS-SSIM = prod_j max(cs_j, 0)^w_j * max(ssim_M, 0)^w_M, per channel, then averaged over
    channels. This is `tf.image.ssim_multiscale` step for step, including its clamp: a negative cs_j (anti-
    correlated structure) would make a fractional power NaN, so, like tf's relu, it counts as 0 and the
    score becomes 0.

    Small images: five scales need the coarsest scale (side / 16) to hold one 11x11 window, i.e. sides of at
    least 161 pixels (odd sides padded; `ms_scales`). For smaller images the coarsest scales that cannot
    hold a window are dropped and the remaining weights are rescaled to keep their total (0.9999), so their
    ratios are unchanged: sides 81-160 px -> 4 scales, 41-80 -> 3, 21-40 -> 2, 11-20 -> 1 (SSIM^0.9999). The
    alternative, shrinking the window with the image, would change the fine-scale SSIM itself and estimate
    the coarse statistics from a handful of pixels; dropping scales keeps each remaining term the standard
    one, and equals `tf.image.ssim_multiscale` with the same truncated, rescaled `power_factors`. Scores at
    different sizes are therefore not strictly comparable; compare methods at the same size.

    Why not call `tf.image.ssim_multiscale`: the scores stay NumPy float64 without TensorFlow, and tf's function
    is then an independent implementation to test this one against (tests/test_metrics.py: equal to 1e-5).

    Args:
        a: array `[H, W]` or `[H, W, C]`, both sides at least 11 pixels. prediction.
        b: array of the same shape. reference.
        data_range: float. the span of possible values (max - min).

    Returns:
        float in [0, 1].
    """
    a, b = _as_pair(a, b)
    scales = ms_scales(a.shape)
    if scales == 0:
        raise InputError(f"ms_ssim needs images of at least {SSIM_FILTER_SIZE} pixels a side, got {a.shape}")
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights *= sum(MS_SSIM_WEIGHTS) / weights.sum()  # identity for the full five scales

    taps = _gaussian_taps(SSIM_FILTER_SIZE, SSIM_FILTER_SIGMA)
    a, b = _with_channels(a), _with_channels(b)
    terms = []
    for scale in range(scales):
        if scale > 0:
            a, b = _halve(a), _halve(b)
        ssim_value, cs = _ssim_and_cs(a, b, data_range, taps)
        terms.append(cs)
    terms[-1] = ssim_value  # the coarsest scale carries luminance too
    terms = np.maximum(np.stack(terms, axis=-1), 0.0)
    return float(np.prod(terms**weights, axis=-1).mean())


# === Decorrelation analysis (Descloux et al. 2019) ===


def _apodize(image, width):
    """Taper the borders to zero with a cosine ramp `width` pixels wide (a separable Tukey window)."""
    h, w = image.shape
    window_y = scipy.signal.windows.tukey(h, alpha=min(1.0, 2.0 * width / h))
    window_x = scipy.signal.windows.tukey(w, alpha=min(1.0, 2.0 * width / w))
    return image * window_y[:, None] * window_x[None, :]


def _curves(radius, amplitude, weights, r):
    """Decorrelation functions d(r) for a stack of radial filters.

    With I the spectrum, In = I / |I| and a real filter w >= 0, the correlation of w I with In M(r) is
    Re sum_{R<r} w I conj(In) / (||w I|| ||In M(r)||) = sum_{R<r} w |I| / (||w I|| sqrt(#{R<r, I != 0})),
    so all curves are cumulative sums over pixels sorted by radius.

    Args:
        radius: [P] sorted normalised radii of the pixels inside the unit circle.
        amplitude: [P] |I| at those pixels.
        weights: [G, P] filter values at those pixels.
        r: [Nr] radii at which to evaluate d.

    Returns:
        [G, Nr] array of d(r).
    """
    count = np.searchsorted(radius, r, side="left")  # pixels with R < r
    nonzero = np.concatenate([[0], np.cumsum(amplitude > 0)])[count]
    weighted = weights * amplitude
    partial = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(weighted, axis=1)], axis=1)[:, count]
    norm = np.sqrt(np.sum(weighted**2, axis=1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = partial / (norm * np.sqrt(nonzero))
    return np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)


def _last_local_max(d, allow_end=False, min_drop=1e-3):
    """Index of the highest-frequency significant local maximum of d(r), or None.

    Runs of equal values (radii between which no pixel is added, common at small r or in small images) are
    one point, indexed by their first radius, so a flat-topped peak still counts. A maximum is significant
    if d falls by more than `min_drop` after it: where d flattens out (noise balancing signal) it wiggles by
    ~1e-5, and such wiggles are not peaks (the reference's getDcorrMax uses the same 1e-3). With `allow_end`,
    a curve without a maximum that still rises at the last radius peaks there.
    """
    starts = np.flatnonzero(np.concatenate([[True], np.diff(d) != 0]))
    values = d[starts]
    interior = np.flatnonzero((values[1:-1] > values[:-2]) & (values[1:-1] > values[2:])) + 1
    for i in interior[::-1]:
        if values[i] - values[i:].min() > min_drop:
            return int(starts[i])
    if allow_end and values.size > 1 and values[-1] > values[-2]:
        return int(starts[-1])
    return None


def _highpass(radius, sigmas):
    """Gaussian high-pass filters 1 - exp(-R^2 / (2 sigma^2)), one row per sigma."""
    sigmas = np.asarray(sigmas, dtype=np.float64)[:, None]
    return 1.0 - np.exp(-(radius[None, :] ** 2) / (2.0 * sigmas**2))


def _peaks(radius, amplitude, sigmas, r):
    """(r_i, A_i, sigma) of the last significant local maximum of each high-pass curve; curves without one
    are skipped."""
    curves = _curves(radius, amplitude, _highpass(radius, sigmas), r)
    found = [(i, _last_local_max(d)) for i, d in enumerate(curves)]
    return [(r[k], curves[i, k], sigma) for (i, k), sigma in zip(found, sigmas) if k is not None]


def decorrelation_cutoff(image, num_radii=50, num_highpass=10, apodization_px=20, min_amplitude=0.05):
    """Cut-off frequency k_c of an image by decorrelation analysis (Descloux et al. 2019), in units of Nyquist.

    Steps, as in the paper and its reference code (getDcorr.m):
    1. Subtract the mean, taper the borders to it with a cosine ramp of `apodization_px` pixels (so the
       periodic FFT sees no edge, which would add false high frequencies), subtract the mean again.
    2. I = FFT(image) restricted to R < 1, R the spatial frequency normalised to Nyquist (0.5 cycles per
       pixel); In = I / |I| (0 where I = 0).
    3. d0(r) = Pearson correlation of the image and the inverse FFT of In M(r), M(r) the disc R < r, for r
       on `num_radii` points in [0, 1]. d0 rises while In M(r) adds frequencies that carry signal and falls
       once it adds noise (or nothing); its last local maximum gives (r0, A0) (a maximum counts only if d
       falls by more than 1e-3 after it, the reference's getDcorrMax threshold against numerical wiggles).
    4. Repeat with high-pass filtered spectra I (1 - exp(-R^2 / (2 sigma^2))), sigma on a geometric series
       from r0 / 4 to 1 / 0.3, plus one very weak filter (sigma = 2 / N); each gives a peak (r_i, A_i).
       High-pass filtering removes the dominant low frequencies so the peak moves to the highest frequency
       still above the noise.
    5. Refinement: `num_highpass` sigmas geometrically between the best filter and its stronger neighbour
       (its weaker one for the strongest filter), and `num_radii` radii in [k - 1/(num_radii-1), k + 0.3],
       k the best peak so far.
    6. k_c = max r_i over all peaks of both passes and d0 whose amplitude A_i >= `min_amplitude` (0.05).
       As in the reference, the maximum includes the coarse first pass, so k_c can sit up to one coarse
       step (1/49) above a sharp cut-off.
    The reference code writes the filter as 1 - exp(-2 g^2 R^2), i.e. sigma = 1 / (2 g); its g series
    [N/4, 2/r0 ... 0.15] is the sigma series above.

    One departure from the reference code: if d0 has no interior maximum and still rises at r = 1, the
    image carries uncorrelated content up to Nyquist (white noise, or an undersampled image) and k_c = 1;
    the reference code reports 0 (no peak) there. Images with an interior d0 peak are unaffected. Caveat: an
    image whose noise swamps its signal (e.g. a band-limited image with noise of equal variance) can give a
    monotone d0 too and then reads as Nyquist-limited, so check the noise level before trusting a k_c of 1 on
    a noisy prediction.

    Args:
        image: array `[H, W]` or `[H, W, 1]`, at least 16 pixels a side.
        num_radii: int. radii sampled per curve (the paper's N_r = 50).
        num_highpass: int. high-pass filters per pass (the paper's N_g = 10).
        apodization_px: int. width of the cosine edge taper (capped at a quarter of the side).
        min_amplitude: float. peaks below this correlation are not significant.

    Returns:
        float in [0, 1]; 0 when no significant peak is found.
    """
    image = _as_image(image, "image")
    if image.ndim == 3:
        if image.shape[-1] != 1:
            raise InputError(f"decorrelation analysis takes one channel, got shape {image.shape}")
        image = image[..., 0]
    if min(image.shape) < 16:
        raise InputError(f"decorrelation analysis needs at least 16 pixels a side, got {image.shape}")

    # 1. Mean-free, apodized image.
    width = min(apodization_px, min(image.shape) // 4)
    image = _apodize(image - image.mean(), width)
    spectrum = np.fft.fft2(image - image.mean())
    spectrum[0, 0] = 0.0  # exactly mean-free: the DC term would otherwise correlate at every r

    # 2. Pixels inside the Nyquist circle, sorted by radius, so every d(r) is a cumulative sum.
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    radius = 2.0 * np.hypot(fy, fx)
    inside = radius < 1.0
    order = np.argsort(radius[inside], kind="stable")
    radius, amplitude = radius[inside][order], np.abs(spectrum[inside])[order]

    # 3. Unfiltered curve d0.
    r = np.linspace(0.0, 1.0, num_radii)
    d0 = _curves(radius, amplitude, np.ones((1, radius.size)), r)[0]
    k0 = _last_local_max(d0, allow_end=True)  # still rising at Nyquist: content up to Nyquist
    r0, a0 = (r[k0], d0[k0]) if k0 is not None else (0.0, 0.0)
    peaks = [(r0, a0, None)]

    # 4. First pass of high-pass filters.
    size = max(image.shape)
    sigma_weak = 2.0 / size
    sigma_start = r0 / 4.0 if r0 > 0 else 1.0 / size
    sigmas = np.concatenate([[sigma_weak], np.geomspace(sigma_start, 1.0 / 0.3, num_highpass)])
    first = _peaks(radius, amplitude, sigmas, r)
    peaks += first

    # 5. Refinement around the highest peak (the last one if tied, as max() on the reversed list).
    best_r, _, best_sigma = max(reversed(peaks), key=lambda p: p[0])
    if best_sigma is None:
        sigma_lo, sigma_hi = 1.0 / (2.0 * size), sigmas[0]
    else:
        j = int(np.flatnonzero(sigmas == best_sigma)[0])
        sigma_lo, sigma_hi = (sigmas[j - 1], sigmas[j]) if j == len(sigmas) - 1 else (sigmas[j], sigmas[j + 1])
    step = 1.0 / (num_radii - 1)
    r_fine = np.linspace(max(best_r - step, 0.0), min(best_r + 0.3, 1.0), num_radii)
    peaks += _peaks(radius, amplitude, np.geomspace(sigma_lo, sigma_hi, num_highpass), r_fine)

    # 6. Highest significant peak.
    significant = [p[0] for p in peaks if p[1] >= min_amplitude and p[0] > 0]
    return float(max(significant, default=0.0))


def decorrelation_resolution(image, pixel_size, **kwargs):
    """Image resolution by decorrelation analysis (Descloux et al. 2019): 2 * pixel_size / k_c.

    k_c is normalised to Nyquist (1 / (2 pixel_size)), so the resolution is the period of the highest
    frequency the image carries above its noise. See `decorrelation_cutoff` for the algorithm.

    Args:
        image: array `[H, W]` or `[H, W, 1]`.
        pixel_size: float. the pixel size, in the unit wanted for the result (nm in the paper).
        **kwargs: passed to `decorrelation_cutoff`.

    Returns:
        float, same unit as `pixel_size`; `inf` when no cut-off is found.
    """
    cutoff = decorrelation_cutoff(image, **kwargs)
    return float(2.0 * pixel_size / cutoff) if cutoff > 0 else float("inf")


# === Power spectrum ===


def radial_power_spectrum(image, rings: int = 32, apodization_px: int = 8):
    """Radially averaged power spectrum of an image: the mean of |F(k)|^2 / (H W) over rings of |k|.

    The image is made mean-free and its borders tapered (`_apodize`), so a frame's non-periodic edges do not
    spread power along the axes at every frequency; k is normalised to Nyquist along each axis (|k| = 1 at
    the Nyquist frequency; the corners beyond it are left out).

    Args:
        image: array [H, W]. One channel.
        rings: int. Rings of width 1 / rings of Nyquist, from 0 to 1.
        apodization_px: int. Width of the cosine taper at the borders (0: none).

    Returns:
        (k, power): float arrays [rings]. The rings' centres (fractions of Nyquist) and the mean power in each
        (NaN in a ring no frequency of the grid falls in).
    """
    image = _as_image(image, "image")
    if image.ndim != 2:
        raise InputError(f"a power spectrum takes one channel, got shape {image.shape}")
    h, w = image.shape
    image = image - image.mean()
    if apodization_px:
        image = _apodize(image, apodization_px)
    power = np.abs(np.fft.fft2(image)) ** 2 / image.size
    k = np.hypot(np.fft.fftfreq(h)[:, None] / 0.5, np.fft.fftfreq(w)[None, :] / 0.5)
    ring = np.floor(k * rings).astype(int)
    inside = (k > 0) & (ring < rings)
    counts = np.bincount(ring[inside], minlength=rings)
    sums = np.bincount(ring[inside], power[inside], minlength=rings)
    with np.errstate(invalid="ignore"):
        return (np.arange(rings) + 0.5) / rings, sums / counts


def spectral_error_db(estimate, truth, low: float = 1 / 16, high: float = 1.0, rings: int = 32) -> float:
    """How far an estimate's power spectrum is from the truth's: the mean over rings of |10 log10(P_est / P_true)|
    in dB, rings from `low` to `high` (fractions of Nyquist; below `low` a few frequencies make each ring; above a
    band-limited truth's cut-off its power is numerical noise, so `high` stops there).

    A smooth estimate (a regression's mean, which averages the posterior's texture away) lacks power at high
    frequencies; a sample of the posterior should have the truth's. 0 dB: the same spectrum; an estimate twice
    the truth's contrast: 6.02 dB at every ring. Compare images on one intensity scale (e.g. after
    `task.centre`).

    Args:
        estimate, truth: arrays [H, W] of one shape.
        low: float. Lowest ring kept, a fraction of Nyquist.
        high: float. Highest ring kept (its centre), a fraction of Nyquist: the truth's band limit, if it has one.
        rings: int. See `radial_power_spectrum`.

    Returns:
        float, dB.
    """
    estimate, truth = _as_pair(estimate, truth)
    k, p_est = radial_power_spectrum(estimate, rings)
    _, p_true = radial_power_spectrum(truth, rings)
    keep = (k >= low) & (k <= high) & (p_est > 0) & (p_true > 0)
    return float(np.mean(np.abs(10.0 * np.log10(p_est[keep] / p_true[keep]))))


# === Uncertainty quality ===


def rank_correlation(a, b):
    """Spearman's rank correlation over pixels (scipy.stats.spearmanr, ties get average ranks).

    Args:
        a: array of any shape. first map.
        b: array with as many elements. second map.

    Returns:
        float in [-1, 1]; NaN when either map is constant (ranks undefined).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise InputError(f"maps differ in size: {a.size} vs {b.size}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        return float(scipy.stats.spearmanr(a, b).statistic)


def uncertainty_correlations(std_map, schedule_map, prediction, truth):
    """How well two uncertainty maps rank the pixels by actual error |prediction - truth|.

    Args:
        std_map: array. pixel-wise standard deviation over samples.
        schedule_map: array. a map from the learned schedule (e.g. tau(y) or beta), same shape.
        prediction: array. the estimate (e.g. the sample mean), same shape.
        truth: array. the ground truth, same shape.

    Returns:
        dict with `std_vs_error` and `schedule_vs_error`: Spearman's rho of each map with the error.
    """
    error = np.abs(np.asarray(prediction, dtype=np.float64) - np.asarray(truth, dtype=np.float64))
    return {
        "std_vs_error": rank_correlation(std_map, error),
        "schedule_vs_error": rank_correlation(schedule_map, error),
    }


# === Calibration of the uncertainty map ===


def calibration_targets(samples: int, antithetic: bool = False) -> tuple[float, float]:
    """The fractions of pixels a calibrated sampler puts within 1 and 2 std * sqrt(1 + 1/K) of the truth, with
    the std estimated from its K samples (ddof = 1): P(|T| <= 1) and P(|T| <= 2) for a Student-t with K - 1
    degrees of freedom (cvdm-math.md section 10): 0.50 / 0.70 at K = 2, 0.61 / 0.86 at 4, 0.65 / 0.91 at 8,
    0.667 / 0.936 at 16, the Gaussian 0.683 / 0.954 only as K grows. NaN for K < 2 (no std).

    Antithetic pairs (`sampler.antithetic`, std with ddof = 0), in the limit where a sample is linear in its
    noise: the mean is the posterior mean, so within 1 and 2 std (no sqrt(1 + 1/K)), and the std has K / 2
    degrees of freedom: a Student-t with K / 2 (0.58 / 0.82 at K = 4, 0.63 / 0.88 at 8)."""
    if samples < 2:
        return float("nan"), float("nan")
    t = scipy.stats.t(df=_degrees_of_freedom(samples, antithetic))
    return float(t.cdf(1) - t.cdf(-1)), float(t.cdf(2) - t.cdf(-2))


def spread_of_error(samples: int, antithetic: bool = False) -> float:
    """c_K: the std of the error of a calibrated sampler's K-sample mean in units of its sigma, sqrt(1 + 1/K);
    1 for antithetic pairs, whose mean is the posterior mean in the linear limit (`calibration_targets`)."""
    return 1.0 if antithetic else float(np.sqrt(1.0 + 1.0 / samples))


def _degrees_of_freedom(samples: int, antithetic: bool) -> float:
    return samples / 2.0 if antithetic else samples - 1.0


def calibration(std_map, error, samples: int, seed: int = 0, antithetic: bool = False) -> dict:
    """How well a std map over K samples describes the error of their mean, pixel by pixel.

    A calibrated sampler: per pixel the truth and the K samples are independent draws from one Gaussian of std
    sigma. Then mean - truth ~ N(0, sigma^2 (1 + 1/K)), and with s the samples' std (ddof = 1),
    (mean - truth) / (s sqrt(1 + 1/K)) follows a Student-t with K - 1 degrees of freedom: the coverage targets
    are `calibration_targets(K)`, not the Gaussian 68.3% / 95.4% (a K = 16 map with 78% within 1 std is
    over-dispersed, its samples spread more than its error).

    Even a calibrated map ranks the pixels by |error| only as well as the spread of sigma allows, and its s is
    itself noisy. `std_vs_error_ceiling` is that bound by parametric bootstrap: per pixel a sigma, a truth and K
    fresh samples drawn from N(0, sigma^2), s re-estimated from the fresh samples, and Spearman's rho of that s
    with |their mean - the truth|. The sigma map is the observed map with its K-sample noise taken out of its
    spread: log s = log sigma + a term of variance psi'((K - 1) / 2) / 4 (the log of a chi with K - 1 degrees of
    freedom), so log s is shrunk towards its mean until its variance is var(log s) minus that (ranks kept).
    Measured on simulated calibrated samplers (log sigma spread 0.2-1.0, K = 2-16), the bootstrap lands within
    0.025 of their own rho; with the observed s as sigma it overstates it (0.54 against 0.22 at K = 2, spread 0.5),
    and correlating the map with a simulated error, the former definition, more still (0.72 in cvdm-math.md).

    Args:
        std_map: array. Pixel-wise std over the K samples (units of `error`).
        error: array, same shape. Signed error of the mean of the samples (estimate - truth).
        samples: int. K.
        seed: int. Seed of the bootstrap draws.
        antithetic: bool. The K samples came in antithetic pairs (`sampler.antithetic`; std with ddof = 0): the
            targets of `calibration_targets(K, antithetic=True)`, no sqrt(1 + 1/K), and the bootstrap draws pairs.

    Returns:
        dict: `within_1_std` and `within_2_std` (fractions of pixels), `within_1_std_target` and
        `within_2_std_target` (what a calibrated sampler reaches at this K), `std_vs_error_ceiling`.
    """
    std = np.asarray(std_map, dtype=np.float64)
    error = np.abs(np.asarray(error, dtype=np.float64))
    if std.shape != error.shape:
        raise InputError(f"std map and error differ in shape: {std.shape} vs {error.shape}")
    sigma_k = std * spread_of_error(samples, antithetic)
    target_1, target_2 = calibration_targets(samples, antithetic)
    dof = _degrees_of_freedom(samples, antithetic)
    ceiling = float("nan")
    if samples >= 2:
        log_std = np.log(np.maximum(std, np.finfo(np.float64).tiny))
        spread = log_std.var()
        noise = scipy.special.polygamma(1, dof / 2.0) / 4.0
        shrink = np.sqrt(max(spread - noise, 0.0) / spread) if spread > 0 else 0.0
        sigma = np.exp(log_std.mean() + shrink * (log_std - log_std.mean()))
        rng = np.random.default_rng(seed)
        if antithetic:  # K / 2 pairs (a, -a): their mean is exactly 0, the posterior mean of the linear limit
            half = rng.normal(size=(samples // 2, *std.shape)) * sigma
            fresh, ddof = np.concatenate([half, -half]), 0
        else:
            fresh, ddof = rng.normal(size=(samples, *std.shape)) * sigma, 1
        truth = rng.normal(size=std.shape) * sigma
        ceiling = rank_correlation(fresh.std(axis=0, ddof=ddof), np.abs(fresh.mean(axis=0) - truth))
    return {"within_1_std": float(np.mean(error <= sigma_k)), "within_2_std": float(np.mean(error <= 2 * sigma_k)),
            "within_1_std_target": target_1, "within_2_std_target": target_2, "std_vs_error_ceiling": ceiling}
