"""Albumentations pipelines shared by all datamodules."""

from __future__ import annotations

import inspect

import albumentations as A
import cv2
import numpy as np


def gauss_noise(max_std: float) -> A.BasicTransform:
    """Additive Gaussian noise with a standard deviation drawn from [0, ``max_std``] (fraction of the range).

    Written for both albumentations APIs: ``std_range`` (fraction of the maximum value, albumentations
    >= 1.4.x / 2.x) and the older ``var_limit`` (variance in grey levels²).
    """
    if "std_range" in inspect.signature(A.GaussNoise).parameters:
        return A.GaussNoise(std_range=(0.0, max_std), p=1.0)
    return A.GaussNoise(var_limit=(0.0, (max_std * 255.0) ** 2), p=1.0)  # pragma: no cover (old API)


#: the number of symmetries of the square: 4 rotations by 90° x (identity, horizontal flip)
SYMMETRIES = 8


def dihedral(array: np.ndarray, variant: int) -> np.ndarray:
    """Symmetry ``variant`` (0–7) of an ``(H, W[, C])`` array: rotation by ``variant % 4`` x 90°
    counter-clockwise, then a left-right flip for ``variant >= 4`` (0 is the array itself).

    Hand-written in two numpy calls: albumentations draws these at random, and the offline 8-fold enlargement
    of König et al. (§IV-A) enumerates them."""
    if not 0 <= variant < SYMMETRIES:
        raise ValueError(f"variant must be in 0..7, got {variant}")
    out = np.rot90(array, variant % 4)
    return np.ascontiguousarray(out[:, ::-1] if variant >= 4 else out)


def build_transform(train: bool, crop_size: int | None = None, image_size: tuple[int, int] | None = None,
                    rotate_limit: float = 90.0, flip: bool = True, color_jitter: float = 0.0, *,
                    rotate90: bool = False, hue_jitter: float = 0.0, gauss_noise_std: float = 0.0,
                    multiplicative_noise: float = 0.0, color_jitter_probability: float = 0.8,
                    scale_jitter: float = 0.0, blur_probability: float = 0.0, gamma_jitter: float = 0.0) -> A.Compose:
    """The augmentation pipeline of a split.

    Defaults follow SCNet / HCNN (§V-B): random rotation in [0, rotate_limit] degrees, horizontal and
    vertical flips, random crop of ``crop_size``. Evaluation pipelines only resize (when
    ``image_size`` is given), so metrics are computed at full resolution.

    The noise options follow König et al.'s weakly supervised crack segmentation (§IV-C: colour jitter,
    Gaussian and multiplicative noise; their code draws one of the two noises per image, albumentations
    ``OneOf``): when both are enabled, one of them, chosen at random, is applied to every training image;
    when one is enabled, it is applied to every training image. (Their per-noise ``p=0.3`` inside
    ``OneOf(..., p=1)`` only weights the choice: albumentations applies the chosen transform with
    ``force_apply=True``, in the 0.4 releases of 2020 as in 2.x.)

    Args:
        train: whether to augment.
        crop_size: side of the random training crop (images smaller than it are reflect-padded);
            None = no crop.
        image_size: (height, width) every image is resized to first; None keeps the size on disk.
        rotate_limit: largest rotation in degrees (0 disables rotation).
        flip: random horizontal and vertical flips.
        color_jitter: brightness / contrast / saturation jitter strength (0 disables it).
        color_jitter_probability: probability that a training image is colour-jittered (0.8; König et al.'s
            classifier code: 0.75).
        rotate90: random rotation by a multiple of 90° (no interpolation, no border: the content and any
            image-level label are preserved; with ``flip`` it draws any of the 8 symmetries of the square).
        hue_jitter: hue jitter of the colour jitter (fraction of the hue circle; used when
            ``color_jitter`` > 0).
        gauss_noise_std: additive Gaussian noise, standard deviation drawn from [0, ``gauss_noise_std``]
            as a fraction of the intensity range (0.01 = up to 2.55 grey levels; 0 disables it).
        multiplicative_noise: the image is multiplied by a factor drawn from [1 − m, 1 + m] (0 disables it).
        scale_jitter: random rescaling by a factor in [1 − s, 1 + s] before the crop (cracks of other widths;
            0 disables it).
        blur_probability: probability of a Gaussian or motion blur (out-of-focus or moving camera).
        gamma_jitter: random gamma in [1 − g, 1 + g] (exposure; 0 disables it).

    Raises:
        ValueError: a strength is negative (or ``multiplicative_noise`` >= 1); the message names the
            ``data.init_args`` option.
    """
    for name, value in (("color_jitter", color_jitter), ("hue_jitter", hue_jitter),
                        ("gauss_noise_std", gauss_noise_std), ("multiplicative_noise", multiplicative_noise),
                        ("scale_jitter", scale_jitter), ("blur_probability", blur_probability),
                        ("gamma_jitter", gamma_jitter)):
        if value < 0:
            raise ValueError(f"data.init_args.{name} must be >= 0, got {value}")
    if hue_jitter > 0.5:
        raise ValueError(f"data.init_args.hue_jitter must be in [0, 0.5], got {hue_jitter}")
    for name, value in (("multiplicative_noise", multiplicative_noise), ("scale_jitter", scale_jitter),
                        ("gamma_jitter", gamma_jitter)):
        if value >= 1:
            raise ValueError(f"data.init_args.{name} must be in [0, 1), got {value}")
    if blur_probability > 1:
        raise ValueError(f"data.init_args.blur_probability must be in [0, 1], got {blur_probability}")
    ops: list[A.BasicTransform] = []
    if image_size is not None:
        ops.append(A.Resize(*image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    if train:
        if scale_jitter > 0:
            ops.append(A.RandomScale(scale_limit=(-scale_jitter, scale_jitter), interpolation=cv2.INTER_LINEAR,
                                     mask_interpolation=cv2.INTER_NEAREST, p=1.0))
        if rotate_limit > 0:
            ops.append(A.Rotate(limit=(0, rotate_limit), border_mode=cv2.BORDER_REFLECT_101,
                                mask_interpolation=cv2.INTER_NEAREST, p=0.5))
        if rotate90:
            ops.append(A.RandomRotate90(p=1.0))
        if flip:
            ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if color_jitter > 0:
            ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=hue_jitter, p=color_jitter_probability))
        if gamma_jitter > 0:
            ops.append(A.RandomGamma(gamma_limit=(100 * (1 - gamma_jitter), 100 * (1 + gamma_jitter)), p=0.5))
        if blur_probability > 0:
            ops.append(A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))],
                               p=blur_probability))
        noises: list[A.BasicTransform] = []
        if gauss_noise_std > 0:
            noises.append(gauss_noise(gauss_noise_std))
        if multiplicative_noise > 0:
            noises.append(A.MultiplicativeNoise(multiplier=(1.0 - multiplicative_noise, 1.0 + multiplicative_noise),
                                                per_channel=False, elementwise=False, p=1.0))
        if len(noises) == 1:
            ops += noises
        elif noises:
            ops.append(A.OneOf(noises, p=1.0))
        if crop_size is not None:
            ops += [A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_REFLECT_101),
                    A.RandomCrop(crop_size, crop_size)]
    return A.Compose(ops)
