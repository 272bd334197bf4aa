"""Crack quantification: length, width, bounding box and area of every crack of a binary mask.

A crack is a connected component of the mask (8-connectivity). Per crack:

- ``area_px``: its pixel count;
- ``bbox_x``, ``bbox_y``, ``bbox_width``, ``bbox_height``: its bounding box (left, top, width, height);
- ``length_px``: length of its skeleton (:func:`skimage.morphology.skeletonize`) measured from pixel centre
  to pixel centre, a step to an orthogonal neighbour counting 1 and a step to a diagonal neighbour √2 (a
  diagonal step is not counted where the two pixels are already joined through a shared orthogonal
  neighbour, so corners are not counted twice); plus, at each end of the skeleton, the distance from the
  end pixel to the crack's edge (thinning stops about half a width short of each end of a crack). A
  straight crack of length L therefore measures about L, and a single pixel measures 1;
- ``max_width_px``, ``mean_width_px``: the local width sampled at every skeleton pixel, then its maximum
  and its mean. The local width is twice the distance from the skeleton to the crack's edge, read from
  the Euclidean distance transform (:func:`cv2.distanceTransform`) of the crack upsampled ×2 (nearest):
  at twice the resolution the edge is resolved to half a pixel, so a straight crack of any width, odd or
  even, measures its width exactly (at native resolution 2·d is one pixel too wide for odd widths and
  2·d − 1 one pixel too narrow for even ones). The mean includes the narrower ends.

Lengths of the 8-connected skeleton are exact along rows, columns and diagonals and at most 8 % long
in between (22.5°); widths of slanted cracks are measured on their pixel staircase.

With ``mm_per_pixel`` (the ground sampling distance of the photo) the same values are also given in
millimetres (``length_mm``, ``max_width_mm``, ``mean_width_mm``, ``area_mm2``).

Each crack is measured on its own bounding-box crop, so memory stays proportional to the largest crack
rather than to the number of cracks times the image.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

PIXEL_FIELDS = ("crack_id", "area_px", "bbox_x", "bbox_y", "bbox_width", "bbox_height", "length_px",
                "max_width_px", "mean_width_px")
MM_FIELDS = ("length_mm", "max_width_mm", "mean_width_mm", "area_mm2")


def crack_fields(mm_per_pixel: float | None) -> tuple[str, ...]:
    """The keys of a :func:`quantify_cracks` row (mm columns only with a scale)."""
    return PIXEL_FIELDS + (MM_FIELDS if mm_per_pixel is not None else ())


def skeleton_length(skeleton: np.ndarray) -> float:
    """Length of a boolean skeleton: orthogonal steps count 1, diagonal steps √2 (corners counted once)."""
    s = skeleton.astype(bool)
    orthogonal = np.count_nonzero(s[:, :-1] & s[:, 1:]) + np.count_nonzero(s[:-1, :] & s[1:, :])
    # a diagonal step whose two pixels also share an orthogonal neighbour is already two orthogonal steps
    down = s[:-1, :-1] & s[1:, 1:] & ~s[:-1, 1:] & ~s[1:, :-1]
    up = s[:-1, 1:] & s[1:, :-1] & ~s[:-1, :-1] & ~s[1:, 1:]
    return float(orthogonal + math.sqrt(2.0) * (np.count_nonzero(down) + np.count_nonzero(up)))


def _end_pixels(skeleton: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean maps of the skeleton's ends (pixels with at most one 8-neighbour on the skeleton) and of its
    isolated pixels (both ends of a crack one pixel long)."""
    s = skeleton.astype(np.uint8)
    neighbours = cv2.filter2D(s, cv2.CV_16S, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT) - s
    return (s > 0) & (neighbours <= 1), (s > 0) & (neighbours == 0)


def _half_pixel_width(crack: np.ndarray, reach: int, rows: int = 512) -> np.ndarray:
    """Local width (pixels) at every pixel of a (padded) uint8 crack crop: the distance transform of the crop
    upsampled ×2 (nearest), maximum over each pixel's 2×2 block (distances in half pixels = width in pixels).

    Computed in strips of ``rows`` rows (plus ``reach`` rows of context, at least the largest distance to the
    background at native resolution, each side), so a crack spanning a whole photo needs no ×4 copy of it.
    """
    height, width = crack.shape
    out = np.empty((height, width), np.float32)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        lo, hi = max(0, top - reach), min(height, bottom + reach)
        fine = cv2.resize(crack[lo:hi], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        distance = cv2.distanceTransform(fine, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        blocks = distance.reshape(hi - lo, 2, width, 2).max(axis=(1, 3))
        out[top:bottom] = blocks[top - lo:bottom - lo]
    return out


def quantify_cracks(mask: np.ndarray, mm_per_pixel: float | None = None, min_area: int = 0) -> list[dict[str, Any]]:
    """One row per crack (8-connected component) of a binary mask, ordered by first pixel in raster order.

    Args:
        mask: (H, W) binary mask (non-zero = crack).
        mm_per_pixel: millimetres per pixel; adds the mm columns (see the module docstring). None: pixels only.
        min_area: components of fewer pixels are left out (specks of noise); ``crack_id`` still counts them,
            so ids are stable whatever ``min_area``.

    Returns:
        Dicts with the keys of :func:`crack_fields`.
    """
    from skimage.morphology import skeletonize  # scikit-image takes 0.4 s to import: only when quantifying

    if mask.ndim != 2:
        raise ValueError(f"quantify_cracks expects an (H, W) mask, got shape {mask.shape}")
    if mm_per_pixel is not None and not mm_per_pixel > 0:
        raise ValueError(f"mm_per_pixel must be > 0, got {mm_per_pixel}")
    binary = (mask > 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_32S)
    rows = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        crack = np.zeros((h + 2, w + 2), np.uint8)  # one background pixel around: the crop's edge is no crack
        crack[1:-1, 1:-1] = labels[y:y + h, x:x + w] == label
        skeleton = skeletonize(crack.astype(bool))
        distance = cv2.distanceTransform(crack, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        ends, isolated = _end_pixels(skeleton)
        edge_gap = np.maximum(distance - 0.5, 0.0)  # from an end pixel's centre to the crack's edge
        length = skeleton_length(skeleton) + float(edge_gap[ends].sum() + edge_gap[isolated].sum())
        widths = _half_pixel_width(crack, reach=int(np.ceil(distance.max())) + 2)[skeleton]
        row: dict[str, Any] = {
            "crack_id": label, "area_px": area, "bbox_x": x, "bbox_y": y, "bbox_width": w, "bbox_height": h,
            "length_px": round(length, 3), "max_width_px": round(float(widths.max()), 3),
            "mean_width_px": round(float(widths.mean()), 3),
        }
        if mm_per_pixel is not None:
            row.update(length_mm=round(length * mm_per_pixel, 4),
                       max_width_mm=round(float(widths.max()) * mm_per_pixel, 4),
                       mean_width_mm=round(float(widths.mean()) * mm_per_pixel, 4),
                       area_mm2=round(area * mm_per_pixel ** 2, 4))
        rows.append(row)
    return rows
