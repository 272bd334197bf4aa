"""Weakly supervised crack pseudo labels from a crack classifier (König et al.).

A classifier trained on image-level crack / no-crack labels localises cracks (patch classification +
GradCAM++); a patch-wise multi-Otsu thresholding finds the dark pixels; their product, filtered, is the pseudo
label (:mod:`crackseg.pseudolabels.generator`). ``crackseg pseudo-label`` writes a pseudo-labelled dataset in
the DeepCrack layout (:mod:`crackseg.pseudolabels.dataset`, :mod:`crackseg.pseudolabels.command`).
"""

from crackseg.models.gradcam import gradcam_plus_plus
from crackseg.pseudolabels.config import CRACK_CLASS, PseudoLabelConfig
from crackseg.pseudolabels.dataset import CheckpointError, LabelQuality, load_classifier, pseudo_label_dataset
from crackseg.pseudolabels.generator import (
    CrackClassifierLike,
    FastPseudoLabeler,
    PseudoLabel,
    PseudoLabelGenerator,
    ReferencePseudoLabeler,
    build_generator,
)
from crackseg.pseudolabels.multiotsu import (
    grid_crack_mask,
    multiotsu_thresholds,
    patch_crack_masks,
    reference_patch_crack_mask,
)

__all__ = [
    "CRACK_CLASS",
    "CheckpointError",
    "CrackClassifierLike",
    "FastPseudoLabeler",
    "LabelQuality",
    "PseudoLabel",
    "PseudoLabelConfig",
    "PseudoLabelGenerator",
    "ReferencePseudoLabeler",
    "build_generator",
    "gradcam_plus_plus",
    "grid_crack_mask",
    "load_classifier",
    "multiotsu_thresholds",
    "patch_crack_masks",
    "pseudo_label_dataset",
    "reference_patch_crack_mask",
]
