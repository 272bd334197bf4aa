"""Procedural generator of synthetic crack images: the embedded default dataset of ``crackseg``.

No real data set can be downloaded, so the suite trains and tests on images drawn from a small
generative model of pavement / concrete photographs. Every random choice comes from one
``numpy.random.Generator`` seeded with the sample seed, and OpenCV is only used for deterministic
operations (drawing, blurring, resizing, distance transforms), so a ``(seed, parameters)`` pair always
gives the same arrays.

Generative model (all intensities are float32 in [0, 1] until the final conversion to uint8):

1. **Surface texture** (grey level).

   * Fractal value noise: a few octaves of small uniform random grids upsampled with bicubic
     interpolation (``cv2.resize``), standardised and summed with decaying amplitudes.
   * Blobs (stones, inclusions, pores) come from a random point set: OpenCV's labelled distance
     transform gives, for every pixel, the distance to its nearest point and that point's label, i.e. a
     Voronoi partition. A blob of random radius sits in each cell, and per-label lookup tables give
     each blob its own radius, brightness and shading.
   * *Concrete*: light grey base, low-frequency mottling, fine grain, sparse lighter/darker inclusions
     (sand, aggregate) and many small dark pores.
   * *Asphalt*: dark binder densely filled with grey stones of varied brightness (dense Voronoi
     blobs with a rounded shading), sand grain and dark voids.
   * Both: soft stains (thresholded low-frequency noise), then a mild colour tint.

2. **Hard negatives** (optional; never part of the mask): large dark/coloured stains, straight
   joints / saw cuts (long, straight and wider than any crack), painted road lines (bright, wide,
   worn stripes), holes / pop-outs (dark round blobs) and oil spots.

3. **Cracks** (optional): one or two main cracks, each a random walk whose heading is the sum of a
   slow meander (bicubic 1-D noise), an AR(1) "momentum" term and a small per-step zig-zag, shifted
   so that its middle lies inside the image. Each crack has 0-3 branches forking off at
   30-70 degrees and tapering to the minimum width. The width varies smoothly along the crack inside
   ``width_range`` and tapers at the free ends. Segments are rasterised into the binary mask as
   quadrilaterals of the exact width plus round joints (``cv2.fillConvexPoly`` / ``cv2.circle``). The
   image is darkened on the mask by a spatially varying contrast; a blurred copy of the mask adds a
   faint halo outside the mask so edges look soft, while the mask itself stays binary.

4. **Acquisition**: linear and radial illumination gradients, global gain, optional slight defocus and
   sensor noise (zero-mean uniform noise, cheaper to draw than Gaussian noise).

``generate_split`` writes a split of such samples to disk (PNG images, 0/255 PNG masks and a
``labels.csv``), atomically and cached by a JSON of its parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.signal import lfilter

__all__ = ["GENERATOR_VERSION", "SURFACES", "generate_sample", "generate_split", "split_plan"]

SURFACES = ("concrete", "asphalt")
"""Surface types known to :func:`generate_sample` (``"mixed"`` picks one of them per seed)."""

GENERATOR_VERSION = 1
"""Bumped whenever the generated pixels change, so cached splits on disk get rebuilt."""

_SHIFT = 4  # sub-pixel bits used for OpenCV drawing
_SCALE = float(1 << _SHIFT)
_F32 = np.float32


# ----------------------------------------------------------------------------------------------------
# Noise primitives
# ----------------------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, h: int, w: int, feature_px: float) -> np.ndarray:
    """One octave of value noise: a uniform random grid upsampled bicubically.

    Args:
        rng: Random generator.
        h: Output height.
        w: Output width.
        feature_px: Approximate spacing of the random grid in output pixels.

    Returns:
        float32 array (h, w), values roughly in [0, 1].
    """
    gy = max(2, round(h / feature_px) + 1)
    gx = max(2, round(w / feature_px) + 1)
    grid = rng.random((gy, gx), dtype=_F32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _fbm(
    rng: np.random.Generator, h: int, w: int, feature_px: float, octaves: int = 3, persistence: float = 0.5
) -> np.ndarray:
    """Fractal (multi-octave) value noise, standardised to zero mean and about unit standard deviation.

    The octaves are summed on their small random grids, each coarser sum being upsampled bicubically
    to the next grid, so only one full-resolution resize is needed.

    Args:
        rng: Random generator.
        h: Output height.
        w: Output width.
        feature_px: Feature size of the coarsest octave in pixels; each further octave halves it.
        octaves: Number of octaves.
        persistence: Amplitude ratio between consecutive octaves.

    Returns:
        float32 array (h, w) with mean about 0 and standard deviation about 1.
    """
    acc = None
    amp = 1.0
    for _ in range(octaves):
        f = max(feature_px, 1.5)
        gy, gx = max(2, round(h / f) + 1), max(2, round(w / f) + 1)
        grid = rng.random((gy, gx), dtype=_F32)
        grid *= _F32(amp)
        if acc is not None:
            grid += cv2.resize(acc, (gx, gy), interpolation=cv2.INTER_CUBIC)
        acc = grid
        amp *= persistence
        feature_px /= 2.0
    acc -= acc.mean()
    acc /= acc.std() + _F32(1e-6)
    return cv2.resize(acc, (w, h), interpolation=cv2.INTER_CUBIC)


def _smooth_1d(rng: np.random.Generator, n: int, knot_every: float, std: float) -> np.ndarray:
    """Smooth random 1-D signal: Gaussian knots upsampled bicubically.

    Args:
        rng: Random generator.
        n: Number of output samples.
        knot_every: Spacing of the random knots in samples.
        std: Standard deviation of the knots.

    Returns:
        float32 array (n,).
    """
    k = max(2, int(n / knot_every) + 2)
    knots = rng.normal(0.0, std, (1, k)).astype(_F32)
    return cv2.resize(knots, (max(n, 1), 1), interpolation=cv2.INTER_CUBIC)[0, :n]


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Hermite smooth step from 0 (x <= lo) to 1 (x >= hi)."""
    t = np.clip((x - _F32(lo)) / _F32(hi - lo), 0.0, 1.0)
    return t * t * (_F32(3.0) - _F32(2.0) * t)


def _blobs(
    rng: np.random.Generator,
    h: int,
    w: int,
    count: int,
    r_lo: float,
    r_hi: float,
    jitter: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random round blobs, one per cell of the Voronoi partition of ``count`` random points.

    Args:
        rng: Random generator.
        h: Image height.
        w: Image width.
        count: Number of random points (blobs).
        r_lo: Minimum blob radius in pixels.
        r_hi: Maximum blob radius in pixels.
        jitter: Optional (h, w) offset added to the distance field, making blob outlines irregular.

    Returns:
        ``(coverage, labels, dist, radius)``: anti-aliased coverage in [0, 1], the Voronoi label of
        each pixel (indexes per-blob lookup tables of length ``count + 1``), the distance to the
        blob centre and the per-pixel blob radius.
    """
    count = max(1, int(count))
    seeds = np.ones((h, w), np.uint8)
    seeds[rng.integers(0, h, count), rng.integers(0, w, count)] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    radius = rng.uniform(r_lo, r_hi, count + 1).astype(_F32)[labels]
    if jitter is not None:
        dist = dist + jitter
    coverage = np.clip(radius - dist + _F32(0.5), 0.0, 1.0)
    return coverage, labels, dist, radius


# ----------------------------------------------------------------------------------------------------
# Surfaces
# ----------------------------------------------------------------------------------------------------
def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise with standard deviation ``std`` (several times faster than Gaussian)."""
    noise = rng.random(shape, dtype=_F32)
    noise -= _F32(0.5)
    noise *= _F32(std * np.sqrt(12.0))
    return noise


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fine, slightly correlated per-pixel grain with unit-ish amplitude."""
    return cv2.GaussianBlur(_uniform_noise(rng, (h, w), 1.8), (0, 0), 0.6)


def _concrete(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey-level concrete texture (float32, (h, w))."""
    area = h * w
    big = max(h, w)
    g = np.full((h, w), rng.uniform(0.5, 0.72), _F32)
    g += _F32(rng.uniform(0.025, 0.06)) * _fbm(rng, h, w, big * rng.uniform(0.3, 0.8), 3)
    g += _F32(rng.uniform(0.015, 0.035)) * _fbm(rng, h, w, rng.uniform(5.0, 12.0), 2)
    g += _F32(rng.uniform(0.012, 0.03)) * _grain(rng, h, w)
    # Sparse lighter / darker inclusions (sand grains, exposed aggregate).
    n_inc = max(1, int(area / rng.uniform(250.0, 900.0)))
    cov, labels, _, _ = _blobs(
        rng, h, w, n_inc, 0.8, rng.uniform(2.5, 5.0), jitter=_F32(0.8) * _fbm(rng, h, w, 3.0, 1)
    )
    shift = rng.normal(0.0, rng.uniform(0.04, 0.1), n_inc + 1).astype(_F32)
    g += cv2.GaussianBlur(cov, (0, 0), 0.7) * shift[labels]
    # Pores: small dark dots.
    n_pore = max(1, int(area / rng.uniform(120.0, 600.0)))
    cov, labels, _, _ = _blobs(rng, h, w, n_pore, 0.3, rng.uniform(1.0, 2.2))
    depth = rng.uniform(0.15, 0.5, n_pore + 1).astype(_F32)
    g *= _F32(1.0) - cov * depth[labels]
    return g


def _asphalt(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey-level asphalt texture (float32, (h, w))."""
    area = h * w
    big = max(h, w)
    binder = rng.uniform(0.15, 0.28)
    stone_mean = binder + rng.uniform(0.1, 0.25)
    stone_std = rng.uniform(0.04, 0.09)
    r_hi = rng.uniform(3.0, 6.0)
    n_stone = max(1, int(area / (rng.uniform(1.0, 1.8) * r_hi * r_hi)))
    cov, labels, dist, radius = _blobs(
        rng, h, w, n_stone, 0.4 * r_hi, r_hi, jitter=_F32(rng.uniform(0.5, 1.2)) * _fbm(rng, h, w, 4.0, 2)
    )
    val = np.clip(rng.normal(stone_mean, stone_std, n_stone + 1), 0.08, 0.9).astype(_F32)
    shade = _F32(1.0) - _F32(0.45) * np.clip(dist / np.maximum(radius, _F32(0.5)), 0.0, 1.0) ** 2
    g = _F32(binder) + cv2.GaussianBlur(cov, (0, 0), 0.5) * (val[labels] * shade - _F32(binder))
    g += _F32(rng.uniform(0.012, 0.03)) * _grain(rng, h, w)
    g += _F32(rng.uniform(0.015, 0.04)) * _fbm(rng, h, w, big * rng.uniform(0.3, 0.8), 3)
    # Voids between stones.
    n_void = max(1, int(area / rng.uniform(300.0, 1200.0)))
    cov, labels, _, _ = _blobs(rng, h, w, n_void, 0.4, 1.8)
    g *= _F32(1.0) - cov * _F32(rng.uniform(0.3, 0.6))
    return g


def _soft_stains(rng: np.random.Generator, g: np.ndarray, strength: float) -> np.ndarray:
    """Large soft blobs from thresholded low-frequency noise; returns their opacity map in [0, strength]."""
    h, w = g.shape[:2]
    field = _fbm(rng, h, w, max(h, w) * rng.uniform(0.25, 0.6), 3)
    t = rng.uniform(0.6, 1.6)
    return _smoothstep(field, t, t + rng.uniform(0.6, 1.5)) * _F32(strength)


# ----------------------------------------------------------------------------------------------------
# Hard negatives
# ----------------------------------------------------------------------------------------------------
def _line_through(
    rng: np.random.Generator, h: int, w: int, axis_aligned: float
) -> tuple[np.ndarray, np.ndarray]:
    """End points (far outside the image) of a random straight line crossing the image."""
    if rng.random() < axis_aligned:
        angle = rng.integers(0, 2) * np.pi / 2 + rng.normal(0.0, 0.06)
    else:
        angle = rng.uniform(0.0, np.pi)
    centre = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
    direction = np.array([np.cos(angle), np.sin(angle)]) * 2.0 * (h + w)
    return centre - direction, centre + direction


def _pt(p: np.ndarray) -> tuple[int, int]:
    """Sub-pixel OpenCV point."""
    return round(float(p[0]) * _SCALE), round(float(p[1]) * _SCALE)


def _add_hard_negatives(
    rng: np.random.Generator, img: np.ndarray, surface: str, width_range: tuple[float, float]
) -> None:
    """Paint hard negatives (never part of the mask) into the RGB float image in place."""
    h, w = img.shape[:2]
    small = min(h, w)
    # Strong, possibly coloured stains (water, rust, dirt).
    if rng.random() < 0.35:
        a = _soft_stains(rng, img[..., 0], rng.uniform(0.15, 0.4))
        colour = np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.6, 0.95)], _F32) * _F32(0.35)
        img += a[..., None] * (colour - img)

    # Oil spots: irregular dark blobs with a brownish / bluish cast.
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.06, 0.22) * small
        # Work in the bounding box of the spot only.
        x0, x1 = max(0, int(cx - 1.6 * r)), min(w, int(cx + 1.6 * r) + 1)
        y0, y1 = max(0, int(cy - 1.6 * r)), min(h, int(cy + 1.6 * r) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        rr = np.sqrt((xx.astype(_F32) - _F32(cx)) ** 2 + (yy.astype(_F32) - _F32(cy)) ** 2) / _F32(r)
        field = _F32(1.0) - rr + _F32(0.2) * _fbm(rng, y1 - y0, x1 - x0, r * 0.8, 3)
        a = _smoothstep(field, -0.1, rng.uniform(0.4, 1.0)) * _F32(rng.uniform(0.2, 0.5))
        tint = np.array([rng.uniform(0.9, 1.05), 1.0, rng.uniform(0.9, 1.1)], _F32)
        img[y0:y1, x0:x1] *= _F32(1.0) - a[..., None] * (_F32(1.0) - _F32(0.25) * tint)

    # Painted road lines: bright, wide, worn stripes (mostly on asphalt).
    if rng.random() < (0.35 if surface == "asphalt" else 0.08):
        p0, p1 = _line_through(rng, h, w, axis_aligned=0.7)
        canvas = np.zeros((h, w), _F32)
        thick = max(int(rng.uniform(0.06, 0.18) * small), int(3 * width_range[1]), 6)
        cv2.line(canvas, _pt(p0), _pt(p1), 1.0, thick, cv2.LINE_AA, _SHIFT)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 0.8)
        lo = rng.uniform(-2.5, -1.0)
        wear = _smoothstep(_fbm(rng, h, w, rng.uniform(2.0, 5.0), 2), lo, lo + 0.8)
        a = canvas * wear * _F32(rng.uniform(0.7, 0.95))
        colour = (
            np.array([0.92, 0.9, 0.86], _F32) if rng.random() < 0.7 else np.array([0.93, 0.78, 0.22], _F32)
        )
        lum = img.mean(axis=2, keepdims=True)
        paint = colour * (_F32(0.75) + _F32(0.6) * lum)  # keeps some of the texture relief
        img += a[..., None] * (paint - img)

    # Joints / saw cuts: long, perfectly straight dark lines, wider than any crack.
    if rng.random() < (0.3 if surface == "concrete" else 0.15):
        p0, p1 = _line_through(rng, h, w, axis_aligned=0.8)
        canvas = np.zeros((h, w), _F32)
        thick = int(rng.uniform(width_range[1] + 2.0, width_range[1] + 8.0))
        cv2.line(canvas, _pt(p0), _pt(p1), 1.0, thick, cv2.LINE_AA, _SHIFT)
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.6, 1.5))
        img *= (_F32(1.0) - canvas * _F32(rng.uniform(0.4, 0.75)))[..., None]

    # Holes / pop-outs: dark round blobs with a darker centre.
    if rng.random() < 0.3:
        canvas = np.zeros((h, w), _F32)
        for _ in range(rng.integers(1, 4)):
            centre = (rng.uniform(0, w), rng.uniform(0, h))
            axes = rng.uniform(2.5, 9.0, 2) * min(1.0, small / 128.0) + 1.0
            cv2.ellipse(
                canvas,
                _pt(np.array(centre)),
                _pt(axes),
                rng.uniform(0, 180),
                0,
                360,
                rng.uniform(0.5, 0.85),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
        a = cv2.GaussianBlur(canvas, (0, 0), 1.2)
        img *= (_F32(1.0) - np.maximum(a, canvas * _F32(0.8)))[..., None]


# ----------------------------------------------------------------------------------------------------
# Cracks
# ----------------------------------------------------------------------------------------------------
def _walk(
    rng: np.random.Generator, start: np.ndarray, heading: float, n: int, step: float, widths: np.ndarray
) -> np.ndarray:
    """Tortuous random walk with momentum.

    The heading is ``heading`` plus a slow meander, an AR(1) term (momentum: turns persist for a
    few steps) and a small independent zig-zag per step. The zig-zag is damped where the crack is
    wide, so that sharp turns of a wide crack do not bulge beyond its nominal width.

    Args:
        rng: Random generator.
        start: (x, y) start point.
        heading: Mean direction in radians.
        n: Number of steps.
        step: Mean step length in pixels.
        widths: Crack width at each of the ``n + 1`` points.

    Returns:
        float array (n + 1, 2) of (x, y) points starting at ``start``.
    """
    meander = _smooth_1d(rng, n, rng.uniform(15.0, 40.0), rng.uniform(0.1, 0.4))
    meander -= meander[0]  # start exactly along ``heading``
    momentum = rng.uniform(0.8, 0.93)
    ar = lfilter([1.0], [1.0, -momentum], rng.normal(0.0, rng.uniform(0.05, 0.12), n))
    zigzag = rng.normal(0.0, rng.uniform(0.25, 0.55), n) * np.clip(2.5 / widths[1:], 0.3, 1.0)
    theta = heading + meander + ar + zigzag
    steps = step * rng.uniform(0.6, 1.4, n)
    d = np.stack([np.cos(theta) * steps, np.sin(theta) * steps], axis=1)
    return np.concatenate([start[None], start[None] + np.cumsum(d, axis=0)], axis=0)


def _width_profile(
    rng: np.random.Generator, n: int, w_start: float, w_lo: float, w_hi: float, taper_start: bool
) -> np.ndarray:
    """Per-point crack width: smooth variation around ``w_start``, tapered to ``w_lo`` at the end(s)."""
    mod = np.exp(_smooth_1d(rng, n, rng.uniform(10.0, 30.0), 0.3))
    t = np.linspace(0.0, 1.0, n)
    taper_len = rng.uniform(0.15, 0.45)
    taper = np.clip((1.0 - t) / taper_len, 0.0, 1.0)
    if taper_start:
        taper = np.minimum(taper, np.clip(t / taper_len, 0.0, 1.0))
    width = w_lo + (np.clip(w_start * mod, w_lo, w_hi) - w_lo) * np.sqrt(taper)
    return np.clip(width, w_lo, w_hi)


def _raster_polyline(mask: np.ndarray, pts: np.ndarray, widths: np.ndarray) -> None:
    """Rasterise a polyline with per-point width (pixels) into ``mask`` (value 1), in place.

    Each segment is a quadrilateral of half-width ``(w - 1) / 2`` around the centre line (a pixel
    is filled when its centre is inside), so a horizontal segment of width ``w`` covers ``w`` rows;
    filled circles at the vertices give round joints. Widths close to 1 use plain 8-connected lines.
    """
    p0, p1 = pts[:-1], pts[1:]
    seg_w = 0.5 * (widths[:-1] + widths[1:])
    half = np.maximum(seg_w - 1.0, 0.0) / 2.0
    d = p1 - p0
    norm = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
    nrm = np.stack([-d[:, 1] / norm, d[:, 0] / norm], axis=1) * half[:, None]
    quads = np.round(np.stack([p0 + nrm, p1 + nrm, p1 - nrm, p0 - nrm], axis=1) * _SCALE).astype(np.int32)
    c0 = np.round(p0 * _SCALE).astype(np.int64).tolist()
    c1 = np.round(p1 * _SCALE).astype(np.int64).tolist()
    radii = np.round(half * _SCALE).astype(np.int64).tolist()
    thin = (half < 0.25).tolist()
    for i in range(len(seg_w)):
        if thin[i]:
            cv2.line(mask, c0[i], c1[i], 1, 1, cv2.LINE_8, _SHIFT)
        else:
            cv2.fillConvexPoly(mask, quads[i], 1, cv2.LINE_8, _SHIFT)
            cv2.circle(mask, c1[i], radii[i], 1, -1, cv2.LINE_8, _SHIFT)
            if i == 0 or thin[i - 1]:
                cv2.circle(mask, c0[i], radii[i], 1, -1, cv2.LINE_8, _SHIFT)


def _branch_length(
    branch: np.ndarray, branch_w: np.ndarray, parent: np.ndarray, parent_w: np.ndarray, step: float
) -> int:
    """Number of branch points to keep so that a branch never merges back into its parent.

    A branch must leave its parent (stop touching it) within a short fork zone, otherwise it is
    dropped (0 is returned); once it has left, it is cut at the first point where it touches the
    parent again. So a branch and its parent never form a band wider than either crack.
    """
    diff = branch[:, None, :] - parent[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    nearest = dist.argmin(axis=1)
    touching = dist[np.arange(len(branch)), nearest] < 0.5 * (branch_w + parent_w[nearest]) + 1.5
    left = np.flatnonzero(~touching)
    fork_zone = 2 + int(np.ceil(2.0 * (branch_w[0] + parent_w[nearest[0]] + 3.0) / step))
    if len(left) == 0 or left[0] > fork_zone:
        return 0
    back = np.flatnonzero(touching[left[0] :])
    return len(branch) if len(back) == 0 else int(left[0] + back[0])


def _crack_mask(rng: np.random.Generator, h: int, w: int, width_range: tuple[float, float]) -> np.ndarray:
    """Binary mask (uint8 {0, 1}) of 1-2 branching, tortuous cracks."""
    w_lo, w_hi = width_range
    mask = np.zeros((h, w), np.uint8)
    diag = float(np.hypot(h, w))
    step = max(2.0, diag / 120.0)
    n_main = 1 if rng.random() < 0.75 else 2
    heading = rng.uniform(0.0, 2.0 * np.pi)
    for _ in range(n_main):
        # One walk, shifted so that a point in its middle lies in the central part of the image.
        anchor = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
        n_a = max(3, int(rng.uniform(0.2, 0.75) * diag / step))
        n_b = max(3, int(rng.uniform(0.2, 0.75) * diag / step))
        w_main = w_lo + (w_hi - w_lo) * rng.random() ** 1.3
        widths = _width_profile(rng, n_a + n_b + 1, w_main, w_lo, w_hi, taper_start=True)
        pts = _walk(rng, np.zeros(2), heading, n_a + n_b, step, widths)
        pts += anchor - pts[n_b]
        _raster_polyline(mask, pts, widths)
        heading += rng.uniform(0.25, 0.75) * np.pi  # a second main crack crosses at a large angle
        # Branches fork off the main crack and taper to the minimum width.
        for _ in range(rng.integers(0, 4)):
            k = int(rng.uniform(0.15, 0.85) * (len(pts) - 1))
            d = pts[min(k + 1, len(pts) - 1)] - pts[max(k - 1, 0)]
            angle = np.arctan2(d[1], d[0]) + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
            angle += np.pi * (rng.random() < 0.5)
            n_br = max(3, int(rng.uniform(0.1, 0.45) * diag / step))
            w_br = max(w_lo, widths[k] * rng.uniform(0.4, 0.85))
            br_widths = _width_profile(rng, n_br + 1, w_br, w_lo, w_hi, taper_start=False)
            br = _walk(rng, pts[k], angle, n_br, step, br_widths)
            end = _branch_length(br, br_widths, pts, widths, step)
            if end >= 2:
                _raster_polyline(mask, br[:end], br_widths[:end])
    return mask


def _darken_cracks(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, surface: str) -> None:
    """Darken ``img`` (contiguous RGB float, in place) on ``mask`` with varying contrast and a soft halo.

    Crack pixels are pulled towards a near-black shadow by a spatially varying contrast; a blurred
    copy of the mask spreads a fainter darkening onto the pixels next to the crack (soft edges).
    Only the pixels near the crack are touched.
    """
    h, w = mask.shape
    base = rng.uniform(0.4, 0.8) if surface == "concrete" else rng.uniform(0.65, 0.9)
    variation = _value_noise(rng, h, w, max(h, w) / rng.uniform(2.0, 5.0)).ravel()
    spread = rng.uniform(0.1, 0.35)
    soft = cv2.GaussianBlur(mask.astype(_F32), (0, 0), rng.uniform(0.6, 1.2)).ravel()
    halo_gain = _F32(rng.uniform(0.25, 0.5))
    shadow = _F32(rng.uniform(0.0, 0.05))
    near = np.flatnonzero(soft > _F32(0.004))  # includes every mask pixel
    s = soft[near]
    contrast = np.clip(_F32(base) + _F32(spread) * (variation[near] - _F32(0.5)), 0.15, 0.92)
    inside = np.minimum(_F32(0.7) + s, _F32(1.0))  # thin parts a little lighter (partial coverage)
    alpha = contrast * np.where(mask.ravel()[near] > 0, inside, s * halo_gain)
    flat = img.reshape(-1, 3)
    px = flat[near]
    px += alpha[:, None] * (shadow - px)
    flat[near] = px


# ----------------------------------------------------------------------------------------------------
# Acquisition
# ----------------------------------------------------------------------------------------------------
def _illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multiplicative shading: global gain x linear gradient x radial fall-off."""
    yy, xx = np.ogrid[0:h, 0:w]
    yy = (yy.astype(_F32) - _F32(h / 2)) / _F32(max(h, w))
    xx = (xx.astype(_F32) - _F32(w / 2)) / _F32(max(h, w))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    linear = _F32(1.0) + _F32(rng.uniform(0.0, 0.45)) * (xx * _F32(np.cos(angle)) + yy * _F32(np.sin(angle)))
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    radial = _F32(1.0) - _F32(rng.uniform(0.0, 0.5)) * ((xx - _F32(cx)) ** 2 + (yy - _F32(cy)) ** 2)
    return linear * radial * _F32(rng.uniform(0.85, 1.15))


def _tint(rng: np.random.Generator, surface: str) -> np.ndarray:
    """Per-channel RGB gains: warm/cool concrete, near-neutral asphalt."""
    if surface == "concrete":
        warm = rng.uniform(-0.05, 0.06)
        base = np.array([1.0 + warm, 1.0, 1.0 - warm])
    else:
        base = np.array([1.0, 1.0, 1.0 + rng.uniform(-0.01, 0.03)])
    return (base * rng.normal(1.0, 0.015, 3)).astype(_F32)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------
def _check_params(size: tuple[int, int], surface: str, width_range: tuple[float, float]) -> tuple[int, int]:
    """Validate the sample parameters shared by the public functions; returns ``(height, width)``."""
    h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least (8, 8), got {size}")
    if surface not in (*SURFACES, "mixed"):
        raise ValueError(f"surface must be one of {(*SURFACES, 'mixed')}, got {surface!r}")
    lo, hi = width_range
    if not 1.0 <= lo <= hi:
        raise ValueError(f"width_range must satisfy 1 <= min <= max, got {width_range}")
    return h, w


def generate_sample(
    seed: int,
    size: tuple[int, int] = (256, 256),
    surface: str = "mixed",
    crack: bool = True,
    hard_negatives: bool = True,
    width_range: tuple[float, float] = (1.0, 6.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic surface image and its crack mask.

    Args:
        seed: Non-negative integer seed; identical ``(seed, parameters)`` give identical arrays.
        size: ``(height, width)`` of the output.
        surface: ``"concrete"``, ``"asphalt"`` or ``"mixed"`` (chosen by the seed).
        crack: Draw cracks. ``False`` gives a defect-free image (mask all zeros) that may still
            contain hard negatives.
        hard_negatives: Add crack-like distractors that are never labelled (stains, joints / saw
            cuts, painted lines, holes / pop-outs, oil spots).
        width_range: ``(min, max)`` crack width in pixels (min >= 1).

    Returns:
        ``(image, mask)``: RGB uint8 array (H, W, 3) and uint8 array (H, W) with values in {0, 1}.
        The mask marks the crack pixels, which are darkened by 15-90 %; only a faint halo (a
        blurred copy of the mask, at most about half as dark) spills onto the pixels next to them.

    Raises:
        ValueError: On an unknown surface, a size below 8 px or an invalid width range.
    """
    h, w = _check_params(size, surface, width_range)
    width_range = (float(width_range[0]), float(width_range[1]))
    rng = np.random.default_rng(seed)
    if surface == "mixed":
        surface = SURFACES[int(rng.integers(0, len(SURFACES)))]

    gray = _concrete(rng, h, w) if surface == "concrete" else _asphalt(rng, h, w)
    if rng.random() < 0.5:
        gray *= _F32(1.0) - _soft_stains(rng, gray, rng.uniform(0.04, 0.15))
    img = gray[..., None] * _tint(rng, surface)

    if hard_negatives:
        _add_hard_negatives(rng, img, surface, width_range)

    if crack:
        mask = _crack_mask(rng, h, w, width_range)
        _darken_cracks(rng, img, mask, surface)
    else:
        mask = np.zeros((h, w), np.uint8)

    img *= _illumination(rng, h, w)[..., None]
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.7))
    img += _uniform_noise(rng, img.shape, rng.uniform(0.004, 0.025))
    out = np.clip(img * _F32(255.0) + _F32(0.5), 0.0, 255.0).astype(np.uint8)
    return out, mask


def _split_key(split: str) -> int:
    """Process-independent integer key of a split name (Python's ``hash`` is salted)."""
    return zlib.crc32(split.encode("utf-8"))


def split_plan(seed: int, split: str, n_images: int, crack_fraction: float = 0.5) -> list[tuple[int, bool]]:
    """Per-image ``(sample_seed, has_crack)`` of a split, as used by :func:`generate_split`.

    Exactly ``round(n_images * crack_fraction)`` images get a crack, at seeded-random positions.
    Sample seeds come from ``numpy.random.SeedSequence(seed, spawn_key=(split_key, 1, index))``, so
    different splits (and indices) never share a sample.

    Args:
        seed: Non-negative dataset seed.
        split: Split name (e.g. ``"train"``).
        n_images: Number of images.
        crack_fraction: Fraction of images with a crack, in [0, 1].

    Returns:
        List of ``(sample_seed, has_crack)`` of length ``n_images``.
    """
    if not 0.0 <= crack_fraction <= 1.0:
        raise ValueError(f"crack_fraction must be in [0, 1], got {crack_fraction}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    key = _split_key(split)
    n_crack = round(n_images * crack_fraction)
    order_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 0)))
    has_crack = np.zeros(n_images, bool)
    has_crack[order_rng.permutation(n_images)[:n_crack]] = True
    seeds = [
        int(np.random.SeedSequence(seed, spawn_key=(key, 1, i)).generate_state(1, np.uint64)[0])
        for i in range(n_images)
    ]
    return list(zip(seeds, has_crack.tolist(), strict=True))


def _progress(items: Iterable[Any], total: int, description: str) -> Iterator[Any]:
    """Wrap ``items`` in a rich progress bar when there are more than 50 and rich is installed."""
    if total > 50:
        try:
            from rich.progress import track
        except ImportError:
            pass
        else:
            yield from track(items, total=total, description=description)
            return
    yield from items


def _read_complete(path: Path) -> Any:
    try:
        return json.loads((path / ".complete").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _imwrite(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def generate_split(
    root: str | os.PathLike,
    split: str,
    n_images: int,
    seed: int,
    size: tuple[int, int] = (256, 256),
    crack_fraction: float = 0.5,
    surface: str = "mixed",
    hard_negatives: bool = True,
    width_range: tuple[float, float] = (1.0, 6.0),
) -> Path:
    """Write a split of synthetic samples to disk (idempotent, cached, atomic).

    Layout: ``root/split/images/NNNNN.png`` (RGB), ``root/split/masks/NNNNN.png`` (0/255 grey) and
    ``root/split/labels.csv`` (header ``stem,label``; 1 = has crack, 0 = defect-free). Which images
    get a crack and the per-image seeds are given by :func:`split_plan`.

    ``root/split/.complete`` holds a JSON of all the parameters (and :data:`GENERATOR_VERSION`). If
    it exists and matches, nothing is regenerated; otherwise the split is rebuilt in a temporary
    sibling folder which then replaces ``root/split``, so an interrupted run never leaves a
    half-written split that looks complete.

    Args:
        root: Dataset root folder (created if missing).
        split: Split name, a single path component (e.g. ``"train"``).
        n_images: Number of images.
        seed: Non-negative dataset seed.
        size: ``(height, width)`` of the images.
        crack_fraction: Fraction of images with a crack.
        surface: ``"concrete"``, ``"asphalt"`` or ``"mixed"``.
        hard_negatives: Add unlabelled distractors (see :func:`generate_sample`).
        width_range: ``(min, max)`` crack width in pixels.

    Returns:
        The split folder ``root/split``.
    """
    if not split or split in (".", "..") or "/" in split or os.sep in split:
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    h, w = _check_params(size, surface, width_range)
    params = {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "n_images": int(n_images),
        "seed": int(seed),
        "size": [h, w],
        "crack_fraction": float(crack_fraction),
        "surface": surface,
        "hard_negatives": bool(hard_negatives),
        "width_range": [float(width_range[0]), float(width_range[1])],
    }
    root = Path(root)
    target = root / split
    if _read_complete(target) == params:
        return target
    plan = split_plan(seed, split, n_images, crack_fraction)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows = ["stem,label"]
        for index, (sample_seed, has_crack) in _progress(enumerate(plan), len(plan), f"Generating {split}"):
            image, mask = generate_sample(
                sample_seed,
                (h, w),
                surface,
                crack=has_crack,
                hard_negatives=hard_negatives,
                width_range=width_range,
            )
            stem = f"{index:05d}"
            _imwrite(tmp / "images" / f"{stem}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            _imwrite(tmp / "masks" / f"{stem}.png", mask * np.uint8(255))
            rows.append(f"{stem},{int(has_crack)}")
        (tmp / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (tmp / ".complete").write_text(json.dumps(params, sort_keys=True), encoding="utf-8")
        if _read_complete(target) == params:  # another process (e.g. a DDP rank) finished first
            return target
        old = None
        if target.exists():
            old = root / f".{split}.old-{uuid.uuid4().hex}"
            try:
                os.replace(target, old)
            except FileNotFoundError:  # moved away by another process meanwhile
                old = None
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process installed the split meanwhile: keep it if it is the one we want.
            if _read_complete(target) != params:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
