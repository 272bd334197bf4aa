"""Parameters of König et al.'s pseudo-label generator, with the paper's values as defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CRACK_CLASS", "PseudoLabelConfig"]

#: index of the crack class in the classifier's two logits (0 = no crack, 1 = crack, as every label of crackseg).
CRACK_CLASS = 1


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Parameters of the pseudo-label generator (König et al., §III-B–D, §IV-C).

    Defaults are the paper's. Where the public reference code (jacobkoenig/WeaklySupervisedCrackSeg) differs,
    a switch gives its behaviour.

    Args:
        patch_size: side of the patches classified (localisation) and thresholded (32, §IV-C).
        classifier_stride: stride of the classified patches (16).
        threshold_stride: stride of the thresholded patches (8).
        patch_merge: ``"average"`` (paper, §III-B: the probabilities of the overlapping patches are averaged
            over every ``classifier_stride``-sized cell they cover, giving a map smaller than the image that
            is then upsampled) or ``"grid"`` (reference code: one value per patch, the patch grid resized to
            the image size as it is).
        cam_class: class whose GradCAM++ map is taken: ``"crack"`` (default: the map localises the crack
            evidence even in an image the classifier calls crack-free) or ``"argmax"`` (reference code: the
            predicted class).
        localisation_threshold: the merged map (patch map + GradCAM++) / 2 keeps its values above this (0.5);
            the rest is set to 0.
        erosion_iterations: iterations of the 3 x 3 grey erosion of the localisation map (4).
        bilateral_radius: ``d`` of both bilateral filters (2, §IV-C): a radius, as in eq. (1), whose sums run
            from ``k - d`` to ``k + d``, so OpenCV gets the diameter ``2 d + 1`` = 5, exactly the reference
            code's ``cv2.bilateralFilter(img, 5, 120, 120)``.
        bilateral_sigma_color: range sigma of the bilateral filters (120).
        bilateral_sigma_space: spatial sigma of the bilateral filters (120).
        code_quirks: reproduce three details of the official code that depart from the paper (False: the
            paper's reading): grey level by ``cv2.COLOR_BGR2GRAY`` of an RGB image (red and blue weights
            swapped), maps rounded to 8 bits and resized with PIL's Hamming filter (instead of a float Lanczos
            resize). With ``patch_merge="grid"`` and ``cam_class="argmax"`` too, this is the official pipeline.
        closing_iterations: iterations of the final 3 x 3 closing (1).
        morph_kernel: side of the square structuring element of the erosion and the closing (3).
        label_threshold: the final confidence map (0–255, the reference code's output) is binarised at
            ``confidence / 255 > label_threshold``; 0.5 is what :class:`~crackseg.datamodules.DeepCrackDataModule`
            does with a grey mask (``> 127``).
        min_crack_pixels: a label needs at least this many crack pixels (100, §III-D).
        below_min: what becomes of an image whose label has fewer: ``"skip"`` (paper: only label-image pairs
            with at least ``min_crack_pixels`` crack pixels are kept) or ``"empty"`` (kept with an empty mask).
    """

    patch_size: int = 32
    classifier_stride: int = 16
    threshold_stride: int = 8
    patch_merge: Literal["average", "grid"] = "average"
    cam_class: Literal["crack", "argmax"] = "crack"
    localisation_threshold: float = 0.5
    erosion_iterations: int = 4
    bilateral_radius: int = 2
    bilateral_sigma_color: float = 120.0
    bilateral_sigma_space: float = 120.0
    code_quirks: bool = False
    closing_iterations: int = 1
    morph_kernel: int = 3
    label_threshold: float = 0.5
    min_crack_pixels: int = 100
    below_min: Literal["skip", "empty"] = "skip"

    @property
    def bilateral_diameter(self) -> int:
        """The OpenCV window diameter of the bilateral filters, ``2 * bilateral_radius + 1``."""
        return 2 * self.bilateral_radius + 1

    def __post_init__(self) -> None:
        checks = [
            (self.patch_size >= 2, f"patch_size must be >= 2, got {self.patch_size}"),
            (self.classifier_stride >= 1 and self.patch_size % self.classifier_stride == 0,
             f"classifier_stride must divide patch_size ({self.patch_size}), got {self.classifier_stride}"),
            (self.threshold_stride >= 1 and self.patch_size % self.threshold_stride == 0,
             f"threshold_stride must divide patch_size ({self.patch_size}), got {self.threshold_stride}"),
            (self.patch_merge in ("average", "grid"),
             f"patch_merge must be 'average' or 'grid', got {self.patch_merge!r}"),
            (self.cam_class in ("crack", "argmax"), f"cam_class must be 'crack' or 'argmax', got {self.cam_class!r}"),
            (0.0 <= self.localisation_threshold < 1.0,
             f"localisation_threshold must be in [0, 1), got {self.localisation_threshold}"),
            (self.erosion_iterations >= 0, f"erosion_iterations must be >= 0, got {self.erosion_iterations}"),
            (self.bilateral_radius >= 1, f"bilateral_radius must be >= 1, got {self.bilateral_radius}"),
            (self.bilateral_sigma_color > 0 and self.bilateral_sigma_space > 0, "bilateral sigmas must be > 0"),
            (self.closing_iterations >= 0, f"closing_iterations must be >= 0, got {self.closing_iterations}"),
            (self.morph_kernel >= 1, f"morph_kernel must be >= 1, got {self.morph_kernel}"),
            (0.0 <= self.label_threshold < 1.0, f"label_threshold must be in [0, 1), got {self.label_threshold}"),
            (self.min_crack_pixels >= 0, f"min_crack_pixels must be >= 0, got {self.min_crack_pixels}"),
            (self.below_min in ("skip", "empty"), f"below_min must be 'skip' or 'empty', got {self.below_min!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"pseudo-label parameter: {message}")
