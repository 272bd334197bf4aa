"""König et al.'s pseudo-label generator: localisation with a crack classifier, patch thresholding, merging.

Steps (paper §III-B–D, parameters §IV-C, :class:`~crackseg.pseudolabels.config.PseudoLabelConfig`):

a) **patch map**: the image (RGB / 255) is mirror-padded at its bottom and right to a multiple of the patch size
   (32), cut into 32 x 32 patches at stride 16, each classified (softmax crack probability); the probabilities
   of the overlapping patches are averaged over each 16 x 16 cell, and the cell map is upsampled to the image
   with Lanczos (``cv2.INTER_LANCZOS4``), clipped to [0, 1];
b) **GradCAM++** of the last convolutional feature map (``net.target_layer``) for the crack class on the whole
   image, divided by its maximum, upsampled the same way;
c) **localisation**: ``(a + b) / 2``, values <= 0.5 set to 0, grey erosion 3 x 3, 4 iterations;
d) **thresholding**: bilateral filter (radius d = 2: 5 x 5 window; sigma_color = sigma_space = 120) of the RGB image,
   grey level, mirror padding to a multiple of 32, 32 x 32 patches at stride 8, each min-max normalised and split by
   3-class multi-Otsu; a pixel is crack when it lies below the lowest threshold in *every* patch covering it;
e) **merge**: ``c x d`` (a confidence map), quantised to 0–255, bilateral filter again, closing 3 x 3 once:
   this is the reference code's output (:attr:`PseudoLabel.confidence`); the label is
   ``confidence / 255 > 0.5``;
f) a label needs at least 100 crack pixels (:attr:`PseudoLabel.kept`); the paper drops the others.

Two implementations give the same labels:

* :class:`ReferencePseudoLabeler` loops over patches (the classifier sees them in batches) and thresholds each
  patch with ``skimage.filters.threshold_multiotsu``: plain code, kept as the test oracle;
* :class:`FastPseudoLabeler` cuts the patches of several images at once with ``Tensor.unfold`` on the device,
  runs the classifier in large batches, computes GradCAM++ for all images of one size in one pass, finds the
  multi-Otsu thresholds of all patches of an image at once (:mod:`crackseg.pseudolabels.multiotsu`, bit-exact
  to scikit-image) from cell histograms, and combines the overlapping patches by a min-pool of their limits
  (:func:`~crackseg.pseudolabels.multiotsu.grid_crack_mask`).

The classifier is anything with the interface of :class:`crackseg.lightning_modules.classifier.CrackClassifier`
(:class:`CrackClassifierLike`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.gradcam import gradcam_plus_plus, gradcam_plus_plus_from_features
from crackseg.pseudolabels.config import CRACK_CLASS, PseudoLabelConfig
from crackseg.pseudolabels.multiotsu import grid_crack_mask, reference_patch_crack_mask

__all__ = [
    "GENERATORS",
    "PRECISIONS",
    "CrackClassifierLike",
    "FastPseudoLabeler",
    "PseudoLabel",
    "PseudoLabelGenerator",
    "ReferencePseudoLabeler",
    "build_generator",
    "finish_label",
    "localisation_map",
    "pad_bottom_right",
    "resolve_device",
    "threshold_input",
    "upsample",
]


class CrackClassifierLike(Protocol):
    """What the generator needs of a crack classifier (the interface of ``CrackClassifier``).

    Attributes:
        net: network with ``forward(x_normalised) -> {"logits": (B, 2)}`` (class 1 = crack) and
            ``target_layer``, the module whose output is the last convolutional feature map.
    """

    net: nn.Module

    def normalize(self, images: Tensor) -> Tensor:
        """RGB in [0, 1] -> network input."""
        ...

    def crack_probability(self, images: Tensor) -> Tensor:
        """Softmax crack probability ``(B,)`` of RGB images in [0, 1], without gradients."""
        ...


@dataclass
class PseudoLabel:
    """The pseudo label of one image.

    Attributes:
        label: ``(H, W)`` uint8 in {0, 1}.
        confidence: ``(H, W)`` uint8 0–255, the map before binarisation (the reference code's output).
        crack_pixels: number of crack pixels of ``label``.
        kept: ``crack_pixels >= min_crack_pixels`` (rule f).
        stages: with ``keep_stages``: ``patch_map``, ``cam``, ``localisation`` (float32 (H, W)) and
            ``threshold_mask`` (bool (H, W)).
    """

    label: np.ndarray
    confidence: np.ndarray
    crack_pixels: int
    kept: bool
    stages: dict[str, np.ndarray] = field(default_factory=dict)


#: autocast dtype of each ``precision`` (None: float32, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pad_bottom_right(array: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad (``numpy`` ``reflect``: the edge pixel is not repeated) the bottom and right of an
    ``(H, W[, C])`` array to the next multiple of ``multiple`` (the reference code's padding)."""
    pad_h, pad_w = -array.shape[0] % multiple, -array.shape[1] % multiple
    if not pad_h and not pad_w:
        return array
    return np.pad(array, [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2), mode="reflect")


def upsample(values: np.ndarray, size: tuple[int, int], code_quirks: bool = False) -> np.ndarray:
    """Lanczos (``cv2.INTER_LANCZOS4``) resize of a float map to ``size`` = (height, width), clipped to [0, 1].

    With ``code_quirks`` (the official code): the map is rounded to 8 bits and resized by PIL's Hamming filter.
    """
    if code_quirks:
        quantised = Image.fromarray(np.clip(np.rint(np.asarray(values) * 255.0), 0, 255).astype(np.uint8))
        resized_8bit = quantised.resize((size[1], size[0]), resample=Image.Resampling.HAMMING)
        return np.asarray(resized_8bit, np.float32) / 255.0
    resized = cv2.resize(np.ascontiguousarray(values, np.float32), (size[1], size[0]),
                         interpolation=cv2.INTER_LANCZOS4)
    return np.clip(resized, 0.0, 1.0)


def threshold_input(image: np.ndarray, config: PseudoLabelConfig) -> np.ndarray:
    """The grey image that is thresholded: bilateral filter of the RGB image, then RGB -> grey (uint8;
    ``code_quirks``: ``COLOR_BGR2GRAY`` of the RGB image, as the official code)."""
    filtered = cv2.bilateralFilter(image, config.bilateral_diameter, config.bilateral_sigma_color,
                                   config.bilateral_sigma_space)
    return cv2.cvtColor(filtered, cv2.COLOR_BGR2GRAY if config.code_quirks else cv2.COLOR_RGB2GRAY)


def localisation_map(patch_map: np.ndarray, cam: np.ndarray, config: PseudoLabelConfig) -> np.ndarray:
    """Step c: ``(patch_map + cam) / 2``, values <= ``localisation_threshold`` set to 0, grey erosion."""
    merged = ((patch_map + cam) / 2.0).astype(np.float32)
    merged[merged <= config.localisation_threshold] = 0.0
    if config.erosion_iterations:
        kernel = np.ones((config.morph_kernel, config.morph_kernel), np.uint8)
        merged = cv2.erode(merged, kernel, iterations=config.erosion_iterations)
    return merged


def finish_label(localisation: np.ndarray, crack_mask: np.ndarray, config: PseudoLabelConfig) -> PseudoLabel:
    """Steps e–f: localisation x threshold mask, bilateral filter, closing, binarisation, the 100-pixel rule."""
    merged = localisation * crack_mask.astype(np.float32)
    confidence = np.clip(np.rint(merged * 255.0), 0, 255).astype(np.uint8)
    confidence = cv2.bilateralFilter(confidence, config.bilateral_diameter, config.bilateral_sigma_color,
                                     config.bilateral_sigma_space)
    if config.closing_iterations:
        kernel = np.ones((config.morph_kernel, config.morph_kernel), np.uint8)
        confidence = cv2.morphologyEx(confidence, cv2.MORPH_CLOSE, kernel, iterations=config.closing_iterations)
    label = (confidence > config.label_threshold * 255.0).astype(np.uint8)
    crack_pixels = int(label.sum())
    return PseudoLabel(label, confidence, crack_pixels, crack_pixels >= config.min_crack_pixels)


def _to_tensor(image: np.ndarray, device: torch.device) -> Tensor:
    """RGB uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1] (``/ 255`` as the reference code)."""
    if not image.flags.writeable or not image.flags.c_contiguous:  # torch.from_numpy wants writable memory
        image = np.array(image, order="C")
    return torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div_(255.0)


class PseudoLabelGenerator:
    """Base of both implementations: checks, GradCAM++ and the per-image steps c, e, f they share.

    Args:
        classifier: a trained crack classifier (:class:`CrackClassifierLike`); it is moved to ``device`` and
            put in eval mode.
        config: the method's parameters (paper defaults).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        batch_size: patches per classifier forward pass.
        channels_last: store the classifier's weights channels-last (NHWC), the layout oneDNN and cuDNN
            convolutions run fastest in (1.4x for the small CPU classifier's patches here); the same numbers up to
            float rounding.
        precision: the classifier's patch passes (step a, four fifths of its work) in ``"32"`` (float32, the
            paper), ``"bf16"`` or ``"16"`` autocast (bfloat16 / float16 tensor cores on a GPU). GradCAM++ always runs
            in float32 (its third powers of gradients underflow in 16 bits). Reduced precision moves patch
            probabilities by about 1e-2, so labels may differ from float32 ones at a few pixels.
        tile_size: a photo with a side longer than ``tile_size + 2 * tile_margin`` px is processed by tiles
            (:class:`FastPseudoLabeler`): its GradCAM++ feature map tile by tile (``tile_size``-px squares, each
            run with ``tile_margin`` px of context around it), its thresholding in bands of ``tile_size``
            rows, so memory follows the tile, not the photo. None: whole images.
        tile_margin: context around each tile (a multiple of the feature map's stride). At least the
            backbone's receptive-field radius (EfficientNet-Lite0: 425 px; ResNet50 less), the tiled feature
            map is the whole-image one and the labels are the same.
    """

    name = "base"

    def __init__(self, classifier: CrackClassifierLike, config: PseudoLabelConfig | None = None,
                 device: str | torch.device = "auto", batch_size: int = 256, channels_last: bool = True,
                 precision: Literal["32", "bf16", "16"] = "32", tile_size: int | None = 1024,
                 tile_margin: int = 512) -> None:
        if tile_size is not None and tile_size < 1 or tile_margin < 0:
            raise ValueError(f"tile_size must be >= 1 (or None) and tile_margin >= 0, got {tile_size}, {tile_margin}")
        self.tile_size, self.tile_margin = tile_size, tile_margin
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if str(precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = str(precision)
        self.config = config if config is not None else PseudoLabelConfig()
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.classifier = classifier
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if isinstance(classifier, nn.Module):
            classifier.to(self.device, memory_format=self.memory_format)
            classifier.eval()

    # -- shared ---------------------------------------------------------------------------------
    def autocast(self) -> torch.autocast:
        """Autocast context of the patch passes (disabled for ``precision="32"``)."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def check_image(self, image: np.ndarray) -> np.ndarray:
        """An RGB uint8 (H, W, 3) image with both sides >= the patch size, or a ValueError."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if min(image.shape[:2]) < self.config.patch_size:
            raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} px is smaller than the "
                             f"{self.config.patch_size}-px patches of the method")
        if not image.flags.writeable or not image.flags.c_contiguous:  # torch.from_numpy wants writable memory
            image = np.array(image, order="C")
        return image

    def tiled(self, image: np.ndarray) -> bool:
        """Whether ``image`` is processed by tiles (a side longer than ``tile_size + 2 * tile_margin``)."""
        return self.tile_size is not None and max(image.shape[:2]) > self.tile_size + 2 * self.tile_margin

    def _cam_class(self) -> int | None:
        return CRACK_CLASS if self.config.cam_class == "crack" else None

    def _cam_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """GradCAM++ of same-size images in one pass, upsampled to the image size (a large photo: its
        feature map by tiles, :meth:`tiled_features`)."""
        size = images[0].shape[:2]
        if self.tiled(images[0]) and hasattr(self.classifier.net, "classify"):
            return [upsample(gradcam_plus_plus_from_features(self.classifier.net.classify, self.tiled_features(image),
                                                             self._cam_class())[0].cpu().numpy(),
                             size, self.config.code_quirks) for image in images]
        batch = torch.cat([_to_tensor(image, self.device) for image in images])
        batch = batch.contiguous(memory_format=self.memory_format)
        maps = gradcam_plus_plus(self.classifier.net, self.classifier.normalize(batch), self._cam_class())
        return [upsample(cam, size, self.config.code_quirks) for cam in maps.cpu().numpy()]

    def tiled_features(self, image: np.ndarray) -> Tensor:
        """The classifier's last feature map ``(1, K, h, w)`` of ``image``, computed by ``tile_size`` squares with
        ``tile_margin`` px of context (both rounded up to the map's stride) and stitched cell by cell."""
        net = self.classifier.net
        reduction = int(getattr(net, "reduction", 32))
        tile = -(-int(self.tile_size or max(image.shape[:2])) // reduction) * reduction
        margin = -(-self.tile_margin // reduction) * reduction
        height, width = image.shape[:2]
        features: Tensor | None = None
        with torch.no_grad():
            for top in range(0, height, tile):
                for left in range(0, width, tile):
                    y0, x0 = max(0, top - margin), max(0, left - margin)
                    y1, x1 = min(height, top + tile + margin), min(width, left + tile + margin)
                    x = self.classifier.normalize(_to_tensor(image[y0:y1, x0:x1], self.device))
                    cells = net.features(x.contiguous(memory_format=self.memory_format)).float()
                    if features is None:  # the whole map's size: cells of the stride, the last one partial
                        features = cells.new_zeros((1, cells.shape[1], -(-height // reduction), -(-width // reduction)))
                    rows = slice(top // reduction, min(features.shape[2], (top + tile) // reduction))
                    cols = slice(left // reduction, min(features.shape[3], (left + tile) // reduction))
                    r0, c0 = (top - y0) // reduction, (left - x0) // reduction
                    features[:, :, rows, cols] = cells[:, :, r0:r0 + rows.stop - rows.start,
                                                       c0:c0 + cols.stop - cols.start]
        assert features is not None
        return features

    def __call__(self, images: Sequence[np.ndarray], keep_stages: bool = False) -> list[PseudoLabel]:
        """Pseudo labels of RGB uint8 images (any sizes >= the patch size)."""
        images = [self.check_image(image) for image in images]
        if not images:
            return []
        patch_maps = self.patch_maps(images)
        cams = self.cams(images)
        masks = self.threshold_masks(images)
        labels = []
        for patch_map, cam, mask in zip(patch_maps, cams, masks, strict=True):
            localisation = localisation_map(patch_map, cam, self.config)
            label = finish_label(localisation, mask, self.config)
            if keep_stages:
                label.stages = {"patch_map": patch_map, "cam": cam, "localisation": localisation,
                                "threshold_mask": mask}
            labels.append(label)
        return labels

    # -- per implementation ---------------------------------------------------------------------
    def patch_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Step a: (H, W) float32 crack-probability maps."""
        raise NotImplementedError

    def cams(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Step b: (H, W) float32 GradCAM++ maps in [0, 1]."""
        raise NotImplementedError

    def threshold_masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Step d: (H, W) bool masks of the pixels dark in every patch covering them."""
        raise NotImplementedError


class ReferencePseudoLabeler(PseudoLabelGenerator):
    """Plain per-patch loops with scikit-image and OpenCV, written to be read (and as the test oracle)."""

    name = "reference"

    def patch_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        cfg = self.config
        size, stride = cfg.patch_size, cfg.classifier_stride
        maps = []
        for image in images:
            padded = pad_bottom_right(image, size)
            rows = range(0, padded.shape[0] - size + 1, stride)
            cols = range(0, padded.shape[1] - size + 1, stride)
            patches = [padded[top:top + size, left:left + size] for top in rows for left in cols]
            probabilities = []
            for start in range(0, len(patches), self.batch_size):
                batch = torch.cat([_to_tensor(p, self.device) for p in patches[start:start + self.batch_size]])
                batch = batch.contiguous(memory_format=self.memory_format)
                with torch.no_grad(), self.autocast():
                    probabilities.append(self.classifier.crack_probability(batch).float().cpu())
            grid = torch.cat(probabilities).numpy().reshape(len(rows), len(cols))
            if cfg.patch_merge == "grid":
                maps.append(upsample(grid, image.shape[:2], cfg.code_quirks))
                continue
            # average the overlapping patches over each stride x stride cell
            per_cell = size // stride
            sums = np.zeros((padded.shape[0] // stride, padded.shape[1] // stride), np.float64)
            counts = np.zeros_like(sums)
            for i in range(len(rows)):
                for j in range(len(cols)):
                    sums[i:i + per_cell, j:j + per_cell] += grid[i, j]
                    counts[i:i + per_cell, j:j + per_cell] += 1
            cells = (sums / counts).astype(np.float32)
            maps.append(upsample(cells, padded.shape[:2], cfg.code_quirks)[:image.shape[0], :image.shape[1]])
        return maps

    def cams(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._cam_batch([image])[0] for image in images]

    def threshold_masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        size, stride = self.config.patch_size, self.config.threshold_stride
        masks = []
        for image in images:
            grey = pad_bottom_right(threshold_input(image, self.config), size)
            crack = np.ones(grey.shape, bool)
            for top in range(0, grey.shape[0] - size + 1, stride):
                for left in range(0, grey.shape[1] - size + 1, stride):
                    window = (slice(top, top + size), slice(left, left + size))
                    crack[window] &= reference_patch_crack_mask(grey[window])
            masks.append(crack[:image.shape[0], :image.shape[1]])
        return masks


class FastPseudoLabeler(PseudoLabelGenerator):
    """Batched and vectorised on the device: the same labels as :class:`ReferencePseudoLabeler`, faster."""

    name = "fast"

    def _padded(self, image: np.ndarray) -> Tensor:
        """(1, 3, Ph, Pw) float in [0, 1], mirror-padded at the bottom and right on the device."""
        tensor = _to_tensor(image, self.device)
        size = self.config.patch_size
        pad_h, pad_w = -image.shape[0] % size, -image.shape[1] % size
        return F.pad(tensor, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else tensor

    def _windows(self, image: np.ndarray) -> Tensor:
        """The 32 x 32 patches (stride 16) of the normalised, padded image as a view ``(gh, gw, ...)`` (no copy).

        The image is normalised once (the same per-pixel operation as per patch); with channels-last memory the
        patches are cut from the (H, W, 3) view, so the copy :meth:`_cut` makes is already in the network's layout.
        """
        size, stride = self.config.patch_size, self.config.classifier_stride
        normalised = self.classifier.normalize(self._padded(image))[0]  # (3, Ph, Pw)
        if self.memory_format == torch.channels_last:
            return normalised.permute(1, 2, 0).unfold(0, size, stride).unfold(1, size, stride)  # gh, gw, 3, s, s
        return normalised.unfold(1, size, stride).unfold(2, size, stride).permute(1, 2, 0, 3, 4)  # gh, gw, 3, s, s

    def _cut(self, windows: Tensor, lo: int, hi: int) -> Tensor:
        """Patches ``lo:hi`` (row-major over the patch grid) of :meth:`_windows`, ``(hi - lo, 3, s, s)``: only
        the grid rows they lie in are copied."""
        size, gw = self.config.patch_size, windows.shape[1]
        first, last = lo // gw, (hi - 1) // gw + 1
        rows = windows[first:last]
        if self.memory_format == torch.channels_last:
            patches = rows.permute(0, 1, 3, 4, 2).reshape(-1, size, size, 3).permute(0, 3, 1, 2)
        else:
            patches = rows.reshape(-1, 3, size, size)
        return patches[lo - first * gw:hi - first * gw]

    def patch_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        cfg = self.config
        size, stride = cfg.patch_size, cfg.classifier_stride
        net = self.classifier.net
        net.eval()
        probabilities, grids = self._patch_probabilities(images)
        maps, offset = [], 0
        per_cell = size // stride
        for image, (gh, gw) in zip(images, grids, strict=True):
            grid = probabilities[offset:offset + gh * gw].reshape(gh, gw)
            offset += gh * gw
            if cfg.patch_merge == "grid":
                maps.append(upsample(grid, image.shape[:2], cfg.code_quirks))
                continue
            # each cell sums the patches covering it: per_cell^2 shifted copies of the grid
            sums = np.zeros((gh + per_cell - 1, gw + per_cell - 1), np.float64)
            counts = np.zeros_like(sums)
            for di in range(per_cell):
                for dj in range(per_cell):
                    sums[di:di + gh, dj:dj + gw] += grid
                    counts[di:di + gh, dj:dj + gw] += 1
            cells = (sums / counts).astype(np.float32)
            padded_size = ((gh + per_cell - 1) * stride, (gw + per_cell - 1) * stride)
            maps.append(upsample(cells, padded_size, cfg.code_quirks)[:image.shape[0], :image.shape[1]])
        return maps

    def _patch_probabilities(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Crack probabilities of every patch of the images in order, in batches of ``batch_size`` across images,
        each batch's patches cut when it runs (memory: one batch, not every patch of a large photo)."""
        net = self.classifier.net
        windows = [self._windows(image) for image in images]
        grids = [(w.shape[0], w.shape[1]) for w in windows]
        counts = [gh * gw for gh, gw in grids]
        total, out = sum(counts), []
        with torch.no_grad(), self.autocast():
            for start in range(0, total, self.batch_size):
                stop, parts, offset = min(total, start + self.batch_size), [], 0
                for view, count in zip(windows, counts, strict=True):
                    lo, hi = max(start, offset), min(stop, offset + count)
                    if lo < hi:
                        parts.append(self._cut(view, lo - offset, hi - offset))
                    offset += count
                batch = parts[0] if len(parts) == 1 else torch.cat(parts)
                out.append(net(batch.contiguous(memory_format=self.memory_format))["logits"].float()
                           .softmax(dim=1)[:, CRACK_CLASS].cpu())
        return torch.cat(out).numpy(), grids

    def cams(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(index)
        cams: list[np.ndarray | None] = [None] * len(images)
        for indices in by_size.values():
            for index, cam in zip(indices, self._cam_batch([images[i] for i in indices]), strict=True):
                cams[index] = cam
        return cams  # type: ignore[return-value]

    def threshold_masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        size, stride = self.config.patch_size, self.config.threshold_stride
        masks = []
        for image in images:
            grey = torch.from_numpy(pad_bottom_right(threshold_input(image, self.config), size)).to(self.device)
            mask = grid_crack_mask(grey, size, stride, band_rows=self.tile_size if self.tiled(image) else None)
            masks.append(mask[:image.shape[0], :image.shape[1]].cpu().numpy())
        return masks


GENERATORS: dict[str, type[PseudoLabelGenerator]] = {"fast": FastPseudoLabeler, "reference": ReferencePseudoLabeler}


def build_generator(name: Literal["fast", "reference"], classifier: CrackClassifierLike,
                    config: PseudoLabelConfig | None = None, device: str | torch.device = "auto",
                    batch_size: int = 256, channels_last: bool = True,
                    precision: Literal["32", "bf16", "16"] = "32", tile_size: int | None = 1024,
                    tile_margin: int = 512) -> PseudoLabelGenerator:
    """The generator called ``name`` (``"fast"`` or ``"reference"``); the arguments are those of
    :class:`PseudoLabelGenerator`."""
    if name not in GENERATORS:
        raise ValueError(f"unknown pseudo-label generator {name!r}: choose one of {sorted(GENERATORS)}")
    return GENERATORS[name](classifier, config, device, batch_size, channels_last, precision, tile_size, tile_margin)
