"""Albumentations pipelines shared by all datamodules."""

from __future__ import annotations

import albumentations as A
import cv2


def build_transform(train: bool, crop_size: int | None = None, image_size: tuple[int, int] | None = None,
                    rotate_limit: float = 90.0, flip: bool = True, color_jitter: float = 0.0) -> A.Compose:
    """The augmentation pipeline of a split.

    Defaults follow SCNet / HCNN (§V-B): random rotation in [0, rotate_limit] degrees, horizontal and
    vertical flips, random crop of ``crop_size``. Evaluation pipelines only resize (when
    ``image_size`` is given), so metrics are computed at full resolution.

    Args:
        train: whether to augment.
        crop_size: side of the random training crop (images smaller than it are reflect-padded);
            None = no crop.
        image_size: (height, width) every image is resized to first; None keeps the size on disk.
        rotate_limit: largest rotation in degrees (0 disables rotation).
        flip: random horizontal and vertical flips.
        color_jitter: brightness / contrast / saturation jitter strength (0 disables it).
    """
    ops: list[A.BasicTransform] = []
    if image_size is not None:
        ops.append(A.Resize(*image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    if train:
        if rotate_limit > 0:
            ops.append(A.Rotate(limit=(0, rotate_limit), border_mode=cv2.BORDER_REFLECT_101,
                                mask_interpolation=cv2.INTER_NEAREST, p=0.5))
        if flip:
            ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if color_jitter > 0:
            ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=0.0, p=0.8))
        if crop_size is not None:
            ops += [A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_REFLECT_101),
                    A.RandomCrop(crop_size, crop_size)]
    return A.Compose(ops)
