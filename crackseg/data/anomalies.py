"""Synthetic anomalies on normal images, for self-supervised pre-training tasks.

An :class:`AnomalySynthesizer` takes an RGB ``uint8`` (H, W, 3) image and a
:class:`numpy.random.Generator` and returns the image with one synthetic anomaly and the ``uint8``
{0, 1} (H, W) mask of the pixels it changed: every pixel outside the mask is left exactly as it was.
All randomness comes from the generator, so a seeded generator gives the same anomaly every time.

- :class:`CutPaste` (Li et al., CVPR 2021): a colour-jittered rectangle of the image pasted elsewhere
  in it.
- :func:`poisson_clone`: Poisson image editing (Pérez et al., SIGGRAPH 2003), used by
  :class:`crackseg.datamodules.PoissonBlend` (real anomalies of another datamodule's images, as in the MSFlow
  task-specific pre-training, §II-B2), which lives beside the datamodules it draws from.

The datamodules apply them through ``synthetic_anomalies`` (:class:`~crackseg.datamodules.CrackDataModule`);
configs name them by short class path (``synthetic_anomalies: {class_path: CutPaste}``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu
from torchvision.transforms import functional as TF

FRAME = 2
"""Width of the image frame no Poisson region may touch (every region pixel needs 4 neighbours)."""


def check_image(image: np.ndarray) -> None:
    """Raise a ValueError unless ``image`` is an RGB ``uint8`` (H, W, 3) array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                     else type(image).__name__)
        raise ValueError(f"synthetic anomalies need an RGB uint8 (H, W, 3) image, got a {described}")


class AnomalySynthesizer:
    """Base class of the synthetic-anomaly operations (callable, picklable for DataLoader workers).

    Subclasses implement :meth:`__call__` and may override :meth:`prepare` for one-off work (the
    datamodule calls it at set-up, before loaders fork their workers).
    """

    def prepare(self) -> None:
        """One-off preparation (finding source images, ...); the base does nothing."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Put one synthetic anomaly on ``image``.

        Args:
            image: RGB ``uint8`` (H, W, 3) image; it is not modified.
            rng: source of all randomness.

        Returns:
            The new RGB ``uint8`` (H, W, 3) image and the ``uint8`` {0, 1} (H, W) mask of the
            anomaly; pixels outside the mask equal the input's.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _check_range(name: str, value: tuple[float, float], low: float, high: float | None) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (low < lo <= hi and (high is None or hi < high)):
        bound = f"{low} < min <= max" + (f" < {high}" if high is not None else "")
        raise ValueError(f"{name} must satisfy {bound}, got {value!r}")
    return lo, hi


class CutPaste(AnomalySynthesizer):
    """CutPaste (Li et al., CVPR 2021): a rectangle of the image, colour-jittered, pasted elsewhere.

    As in the CutPaste paper and its unofficial reference code (Runinho/pytorch-cutpaste,
    ``CutPasteNormal``): the rectangle's area is ``U(area_ratio)`` times the image area and its
    aspect ratio (width / height) log-uniform in ``aspect_ratio``; it is cut at a random place,
    jittered (brightness, contrast, saturation and hue factors drawn as in torchvision's
    ``ColorJitter``, applied in random order) and pasted at an independent random place (which may
    overlap the cut). Sides are rounded to whole pixels and clipped to the image. The mask is the
    paste box.

    Args:
        area_ratio: (min, max) area of the rectangle as a fraction of the image area, in (0, 1).
        aspect_ratio: (min, max) width / height of the rectangle; the CutPaste default (0.3, 1 / 0.3).
        color_jitter: brightness / contrast / saturation / hue jitter strength (0 disables it; hue is
            capped at 0.5).
    """

    def __init__(self, area_ratio: tuple[float, float] = (0.02, 0.15),
                 aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3), color_jitter: float = 0.1) -> None:
        self.area_ratio = _check_range("CutPaste area_ratio", area_ratio, 0.0, 1.0)
        self.aspect_ratio = _check_range("CutPaste aspect_ratio", aspect_ratio, 0.0, None)
        if color_jitter < 0:
            raise ValueError(f"CutPaste color_jitter must be >= 0, got {color_jitter}")
        self.color_jitter = float(color_jitter)

    def box_size(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """(height, width) of a random rectangle for an image of ``height`` x ``width``."""
        area = rng.uniform(*self.area_ratio) * height * width
        aspect = math.exp(rng.uniform(math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1])))
        box_w = min(max(int(round(math.sqrt(area * aspect))), 1), width)
        box_h = min(max(int(round(math.sqrt(area / aspect))), 1), height)
        return box_h, box_w

    def jitter(self, patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``patch`` (RGB uint8) with random brightness, contrast, saturation and hue changes."""
        strength = self.color_jitter
        if strength == 0:
            return patch
        tensor = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)
        ops = [
            lambda t, f: TF.adjust_brightness(t, f),
            lambda t, f: TF.adjust_contrast(t, f),
            lambda t, f: TF.adjust_saturation(t, f),
        ]
        factors = [rng.uniform(max(0.0, 1 - strength), 1 + strength) for _ in ops]
        hue = rng.uniform(-min(strength, 0.5), min(strength, 0.5))
        for i in rng.permutation(4).tolist():
            tensor = TF.adjust_hue(tensor, hue) if i == 3 else ops[i](tensor, factors[i])
        return tensor.permute(1, 2, 0).numpy()

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_image(image)
        height, width = image.shape[:2]
        box_h, box_w = self.box_size(height, width, rng)
        y0, x0 = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        y1, x1 = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        patch = self.jitter(image[y0:y0 + box_h, x0:x0 + box_w], rng)
        out = image.copy()
        out[y1:y1 + box_h, x1:x1 + box_w] = patch
        mask = np.zeros((height, width), np.uint8)
        mask[y1:y1 + box_h, x1:x1 + box_w] = 1
        return out, mask


def poisson_clone(source: np.ndarray, target: np.ndarray, region: np.ndarray, mixed: bool = False) -> np.ndarray:
    """Poisson image editing (Pérez et al. 2003, discrete formulation), solved exactly on ``region``.

    Solves, per channel, the discrete Poisson equation ``|N_p| f_p - sum_{q in N_p ∩ Ω} f_q =
    sum_{q in N_p ∩ ∂Ω} f*_q + sum_{q in N_p} v_pq`` for the pixels ``p`` of Ω = ``region`` (4-neighbours
    ``N_p``), with Dirichlet boundary values from ``target`` and guidance ``v_pq = g_p - g_q`` of the
    source (importing gradients) or, with ``mixed``, per pixel pair whichever of the source's and
    target's differences is larger in magnitude (mixing gradients). Pixels outside Ω are returned
    unchanged. A sparse LU factorisation (SciPy) solves the three channels at once (about 10 ms for a
    7000-pixel region on one CPU core).

    Args:
        source: RGB ``uint8`` (H, W, 3) image aligned with ``target``.
        target: RGB ``uint8`` (H, W, 3) image the region is cloned into.
        region: bool or {0, 1} (H, W) mask of Ω; it must not touch the image border.
        mixed: mixed gradients instead of the source's.

    Returns:
        The cloned ``uint8`` image.
    """
    omega = region.astype(bool)
    if omega[0].any() or omega[-1].any() or omega[:, 0].any() or omega[:, -1].any():
        raise ValueError("poisson_clone: the region must not touch the image border")
    out = target.copy()
    ys, xs = np.nonzero(omega)
    n = len(ys)
    if n == 0:
        return out
    index = np.full(omega.shape, -1, np.int64)
    index[ys, xs] = np.arange(n)
    src = source.astype(np.float64)
    dst = target.astype(np.float64)
    rhs = np.zeros((n, src.shape[2]))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        guidance = src[ys, xs] - src[qy, qx]
        if mixed:
            target_diff = dst[ys, xs] - dst[qy, qx]
            guidance = np.where(np.abs(target_diff) > np.abs(guidance), target_diff, guidance)
        rhs += guidance
        inside = omega[qy, qx]
        rhs[~inside] += dst[qy[~inside], qx[~inside]]
        rows.append(np.flatnonzero(inside))
        cols.append(index[qy[inside], qx[inside]])
        vals.append(np.full(int(inside.sum()), -1.0))
    matrix = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    solution = splu(matrix).solve(rhs)
    out[ys, xs] = np.clip(np.rint(solution), 0, 255).astype(np.uint8)
    return out
