"""Synthetic anomalies on normal images, for self-supervised pre-training tasks.

An :class:`AnomalySynthesizer` takes an RGB ``uint8`` (H, W, 3) image and a
:class:`numpy.random.Generator` and returns the image with one synthetic anomaly and the ``uint8``
{0, 1} (H, W) mask of the pixels it changed: every pixel outside the mask is left exactly as it was.
All randomness comes from the generator, so a seeded generator gives the same anomaly every time.

- :class:`CutPaste` (Li et al., CVPR 2021): a colour-jittered rectangle of the image pasted elsewhere
  in it.
- :class:`PoissonBlend`: the real anomalous regions of another dataset's images, cloned into the image
  by Poisson image editing (Pérez et al., SIGGRAPH 2003), as in the MSFlow task-specific pre-training
  (§II-B2): DeepCrack cracks onto Crack500, MVTec hazelnut defects onto wood, wood defects onto tile.

The datamodules apply them through ``synthetic_anomalies`` (:class:`~crackseg.datamodules.CrackDataModule`);
configs name them by short class path (``synthetic_anomalies: {class_path: CutPaste}``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu
from torchvision.transforms import functional as TF

from crackseg.data.dataset import Sample, load_sample, read_sample_mask
from crackseg.data.io import DataError

if TYPE_CHECKING:  # a runtime import would be circular; jsonargparse resolves TYPE_CHECKING imports
    from crackseg.datamodules.base import CrackDataModule

_FRAME = 2
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


class PoissonBlend(AnomalySynthesizer):
    """Real anomalies of another dataset, Poisson-cloned into the image (MSFlow pre-training, §II-B2).

    The source pool is every sample of ``split`` of the ``source`` datamodule with a non-empty mask
    (found once, by :meth:`prepare` or on first use; only the sample list is kept, so the op pickles
    into DataLoader workers without the datamodule). Per call:

    1. a random source sample is read and resized (image: area interpolation, mask: nearest) to the
       target's size, so a 544x384 DeepCrack image fits a 256x256 input (its aspect ratio is not
       kept);
    2. the anomalous region is the whole mask (``region="whole"``, the paper's "its anomalous
       regions") or one of its 8-connected components, drawn with probability proportional to its
       area (``region="component"``), dilated by ``dilate`` pixels so the defect's dark rim and its
       immediate surroundings are part of the cloned region;
    3. the region's bounding box is placed at a random position inside the target (a 2-pixel frame of
       the image stays outside the region: the solver needs the region's neighbours; a region
       wider than that is centred and cut at the frame);
    4. the region is cloned by Poisson image editing with the source's gradients as the guidance
       field (``guidance="source"``, the paper's choice for opaque defects) or mixed gradients
       (``guidance="mixed"``).

    The returned mask is the cloned region Ω: exactly the pixels that may differ from the input.

    Solvers: ``"exact"`` (default) solves Pérez et al.'s equation on Ω with the target as Dirichlet
    boundary (:func:`poisson_clone`), as the paper's reference code (bchao1/fast-poisson-image-editing)
    does (there the boundary is the mask's own outer ring), so no pixel outside Ω changes.
    ``"opencv"`` uses ``cv2.seamlessClone``, which solves another problem: on the whole bounding box
    of the mask, with the target as boundary on the box's border and the target's gradients outside
    the mask eroded by 3 pixels. Measured with OpenCV 5.0 (20 DeepCrack test cracks onto magnetic
    tiles, 256x256, masks dilated by 3 to 7 px): on average 35,000 to 43,000 of the 65,536 pixels
    changed outside the mask (none outside its bounding box), by up to 78 to 96 grey levels, 95th
    percentile 17 to 33; and thin cracks vanish unless dilated (crack-to-surround contrast 70 grey
    levels in the sources: 0 left without dilation, 16 with 3 px, 45 with 5 px; the exact solver keeps
    40 without and 43 with 2 px). With ``"opencv"`` the target's pixels outside Ω are therefore
    copied back, so mask = changed region still holds, at the price of a step at the region's edge
    (the seam Poisson editing is meant to avoid; with dilate 5, median 8 and 90th percentile 20 grey
    levels along the edge); give it ``dilate`` >= 5.

    Args:
        source: the datamodule of the source dataset, e.g.
            ``{class_path: DeepCrackDataModule, init_args: {root: data/DeepCrack}}``.
        split: the source split whose anomalies are used (the paper uses test images).
        guidance: guidance field ``"source"`` (source gradients, OpenCV's NORMAL_CLONE) or ``"mixed"`` (the
            larger of source and target gradients, MIXED_CLONE).
        region: ``"whole"`` mask or one connected ``"component"`` per anomaly.
        dilate: dilation of the region in pixels (0 clones the annotated pixels only).
        solver: ``"exact"`` or ``"opencv"`` (see above).
        max_tries: source samples drawn before giving up when the region vanishes (a region inside
            the image frame); the image is then returned unchanged with an empty mask.
    """

    def __init__(self, source: CrackDataModule, split: Literal["train", "val", "test"] = "test",
                 guidance: Literal["source", "mixed"] = "source", region: Literal["whole", "component"] = "whole",
                 dilate: int = 2, solver: Literal["exact", "opencv"] = "exact", max_tries: int = 10) -> None:
        from crackseg.datamodules.base import CrackDataModule

        if not isinstance(source, CrackDataModule):
            raise ValueError(f"PoissonBlend source must be a crackseg datamodule (e.g. {{class_path: "
                             f"DeepCrackDataModule, init_args: {{root: ...}}}}), got {type(source).__name__}")
        choices = (("split", split, ("train", "val", "test")), ("guidance", guidance, ("source", "mixed")),
                   ("region", region, ("whole", "component")), ("solver", solver, ("exact", "opencv")))
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"PoissonBlend {name} must be one of {', '.join(allowed)}; got {value!r}")
        if dilate < 0:
            raise ValueError(f"PoissonBlend dilate must be >= 0, got {dilate}")
        if max_tries < 1:
            raise ValueError(f"PoissonBlend max_tries must be >= 1, got {max_tries}")
        self.source = source
        self.split = split
        self.guidance = guidance
        self.region = region
        self.dilate = dilate
        self.solver = solver
        self.max_tries = max_tries
        self._pool: list[Sample] | None = None
        self._mask_threshold = source.mask_threshold
        self._source_name = f"{type(source).__name__} under {source.root}"

    @property
    def pool(self) -> list[Sample]:
        """The source samples with a non-empty mask (found on first access)."""
        if self._pool is None:
            self.prepare()
        assert self._pool is not None
        return self._pool

    def prepare(self) -> None:
        """Find the source pool: the ``split`` samples of ``source`` whose mask is not empty.

        Raises:
            DataError: the source split has no sample with a non-empty mask.
        """
        if self._pool is not None:
            return
        candidates = self.source.split_samples()[self.split]
        pool = [s for s in candidates if s.mask is not None and read_sample_mask(s, self._mask_threshold).any()]
        if not pool:
            raise DataError(f"PoissonBlend: no {self.split} image of {self._source_name} has a non-empty "
                            f"anomaly mask ({len(candidates)} images in that split), so there is nothing to "
                            "clone (check the source's root and split)")
        self._pool = pool

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if state["_pool"] is not None:  # the datamodule is no longer needed
            state["source"] = None
        return state

    def _region(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.region == "component":
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
            mask = (labels == 1 + int(rng.choice(count - 1, p=areas / areas.sum()))).astype(np.uint8)
        if self.dilate > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilate + 1, 2 * self.dilate + 1))
            mask = cv2.dilate(mask, kernel)
        return mask

    def _place(self, src: np.ndarray, region: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Source and region moved so the region's bounding box lies at a random place in the frame."""
        height, width = region.shape
        x, y, w, h = cv2.boundingRect(region)
        offsets = []
        for start, size, side in ((y, h, height), (x, w, width)):
            high = side - _FRAME - size
            new = int(rng.integers(_FRAME, high + 1)) if high >= _FRAME else (side - size) // 2
            offsets.append(new - start)
        shift = np.float32([[1, 0, offsets[1]], [0, 1, offsets[0]]])
        moved_src = cv2.warpAffine(src, shift, (width, height), flags=cv2.INTER_NEAREST)
        moved = cv2.warpAffine(region, shift, (width, height), flags=cv2.INTER_NEAREST)
        moved[:_FRAME], moved[-_FRAME:], moved[:, :_FRAME], moved[:, -_FRAME:] = 0, 0, 0, 0
        return moved_src, moved

    def _clone(self, src: np.ndarray, image: np.ndarray, region: np.ndarray) -> np.ndarray:
        if self.solver == "exact":
            return poisson_clone(src, image, region, mixed=self.guidance == "mixed")
        x, y, w, h = cv2.boundingRect(region)
        # src and region are aligned with the image: a centre at the box centre keeps them in place
        flag = cv2.NORMAL_CLONE if self.guidance == "source" else cv2.MIXED_CLONE
        cloned = cv2.seamlessClone(src, image, region * 255, (x + w // 2, y + h // 2), flag)  # region * 255: a copy
        return np.where(region[..., None] > 0, cloned, image)  # OpenCV also changes pixels outside the mask

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_image(image)
        height, width = image.shape[:2]
        pool = self.pool
        for _ in range(self.max_tries):
            sample = pool[int(rng.integers(len(pool)))]
            src, mask = load_sample(sample, self._mask_threshold)
            src = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            if not mask.any():  # a thin anomaly can vanish when shrunk
                continue
            src, region = self._place(src, self._region(mask, rng), rng)
            if region.any():
                return self._clone(src, image, region), region
        return image.copy(), np.zeros((height, width), np.uint8)
