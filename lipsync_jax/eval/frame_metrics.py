"""Per-frame image quality metrics between generated and reference frames: PSNR and SSIM.

Pure functions on arrays (no I/O); frames are RGB (h, w, c) or batches (n, h, w, c), uint8 or
float, compared on the scale ``data_range`` (255 for uint8 frames, 2 for [-1, 1] images).

- PSNR = 10 log10(data_range^2 / MSE), MSE over all pixels and channels of a frame; +inf for
  identical frames. Computed in float64.
- SSIM (Wang et al. 2004): local statistics under an 11x11 Gaussian window (sigma 1.5,
  normalised), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = data_range,
  ``((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
  population (biased) moments, evaluated where the window fits inside the frame ("valid";
  the same pixels scikit-image averages with ``gaussian_weights=True``), computed per channel
  and averaged over pixels and channels. Computed in float32 with JAX on [0, 1]-scaled
  values, one jitted call per batch of equally sized frames.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class FrameMetricsError(ValueError):
    """Frames that cannot be compared (shape mismatch, too small for the SSIM window)."""


def _as_batch(frames, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 2:  # one grey image
        frames = frames[None, ..., None]
    elif frames.ndim == 3:  # one (h, w, c) image
        frames = frames[None]
    if frames.ndim != 4:
        raise FrameMetricsError(f"{what}: expected (h, w, c) or (n, h, w, c) frames, got shape {frames.shape}")
    return frames


def _check_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_batch(x, "generated"), _as_batch(y, "reference")
    if x.shape != y.shape:
        raise FrameMetricsError(f"frame shapes differ: generated {x.shape[1:]} x {x.shape[0]}, "
                                f"reference {y.shape[1:]} x {y.shape[0]}")
    return x, y


def mse(x, y) -> np.ndarray:
    """Mean squared error per frame, (n,) float64."""
    x, y = _check_pair(x, y)
    diff = x.astype(np.float64) - y.astype(np.float64)
    return np.mean(diff * diff, axis=(1, 2, 3))


def psnr(x, y, data_range: float = 255.0) -> np.ndarray:
    """PSNR in dB per frame, (n,) float64; +inf where the frames are identical."""
    errors = mse(x, y)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / errors)


def psnr_from_mse(mean_squared_error: float, data_range: float = 255.0) -> float:
    """PSNR of a pooled MSE (e.g. over all frames of a clip); +inf for 0."""
    if mean_squared_error <= 0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mean_squared_error))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian (size,); the 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return w / w.sum()


def _filter_valid(images: jax.Array, taps: tuple[float, ...]) -> jax.Array:
    """Separable 'valid' filtering of (n, h, w, c) along h and w with the 1-D ``taps``."""
    k = len(taps)
    h, w = images.shape[1] - k + 1, images.shape[2] - k + 1
    rows = sum(t * images[:, i:i + h] for i, t in enumerate(taps))  # (n, h', w, c)
    return sum(t * rows[:, :, i:i + w] for i, t in enumerate(taps))  # (n, h', w', c)


@functools.partial(jax.jit, static_argnames=("taps", "k1", "k2"))
def _ssim_batch(x: jax.Array, y: jax.Array, taps: tuple[float, ...], k1: float, k2: float) -> jax.Array:
    """Mean SSIM per frame of (n, h, w, c) inputs already scaled to [0, 1] (data range 1)."""
    c1, c2 = k1 * k1, k2 * k2
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x * mu_x
    var_y = _filter_valid(y * y, taps) - mu_y * mu_y
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))  # (n,)


def ssim(x, y, data_range: float = 255.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         k1: float = SSIM_K1, k2: float = SSIM_K2) -> np.ndarray:
    """Mean SSIM per frame, (n,) float64 (computed in float32); 1.0 for identical frames."""
    x, y = _check_pair(x, y)
    if min(x.shape[1], x.shape[2]) < window:
        raise FrameMetricsError(
            f"frames of {x.shape[1]}x{x.shape[2]} are smaller than the {window}x{window} SSIM window")
    taps = tuple(float(t) for t in gaussian_window(window, sigma))
    scale = np.float32(1.0 / data_range)
    xs = jnp.asarray(x, jnp.float32) * scale
    ys = jnp.asarray(y, jnp.float32) * scale
    return np.asarray(_ssim_batch(xs, ys, taps, float(k1), float(k2)), np.float64)


def lower_half(frames) -> np.ndarray:
    """The lower half (mouth region) of aligned faces (..., h, w, c) -> (..., h - h // 2, w, c),
    the part LatentSync's SyncNet sees."""
    frames = np.asarray(frames)
    return frames[..., frames.shape[-3] // 2:, :, :]
