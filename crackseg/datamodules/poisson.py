"""Poisson-blended real anomalies from another datamodule (MSFlow task-specific pre-training, §II-B2).

:class:`PoissonBlend` takes its source anomalies from a :class:`~crackseg.datamodules.CrackDataModule`, so it
lives beside the datamodules (``crackseg.data`` stays free of datamodule imports); configs name it by short
class path (``synthetic_anomalies: {class_path: PoissonBlend, init_args: {source: ...}}``).
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np

from crackseg.data.anomalies import FRAME, AnomalySynthesizer, check_image, poisson_clone
from crackseg.data.dataset import Sample, load_sample, read_sample_mask
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule

__all__ = ["PoissonBlend"]


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
            high = side - FRAME - size
            new = int(rng.integers(FRAME, high + 1)) if high >= FRAME else (side - size) // 2
            offsets.append(new - start)
        shift = np.float32([[1, 0, offsets[1]], [0, 1, offsets[0]]])
        moved_src = cv2.warpAffine(src, shift, (width, height), flags=cv2.INTER_NEAREST)
        moved = cv2.warpAffine(region, shift, (width, height), flags=cv2.INTER_NEAREST)
        moved[:FRAME], moved[-FRAME:], moved[:, :FRAME], moved[:, -FRAME:] = 0, 0, 0, 0
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
