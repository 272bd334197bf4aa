"""Tiled inference: a map of an image of any size from overlapping tiles, blended without seams.

The image is cut into a grid of equal, overlapping tiles; each tile's map is multiplied by a separable
weight window and added into one full-resolution sum; the sum is divided by the total weight at the end.
Across the band two neighbouring tiles share, the outer quarter next to each tile's edge gets no weight
from that tile (there the network saw padding instead of the image around the tile), and the middle half
cross-fades from one tile to the other along a raised cosine (sin² rising, cos² falling: they add up to
1); sides on the image border keep weight 1. The stitched map is thus a smooth blend with no seam where
a tile ends, and where the network's receptive-field radius is at most a quarter of the overlap it is
exactly the map of the whole image (every pixel's weight comes from tiles that saw all its context).

Memory is bounded whatever the image size: tiles are cut, run and accumulated a batch at a time, the
only full-resolution buffer is the float32 sum on the CPU (4 bytes per pixel and map channel); because
the windows are products of a row window and a column window over a grid of tiles, the total weight is
the outer product of two 1-D sums and needs no full-resolution buffer of its own.

Hand-written: MONAI's ``sliding_window_inference`` does this but keeps its accumulators on the input's
device and is a heavy dependency; the grid, window and accumulation here are about a hundred lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class TileSettings:
    """How to tile an image for prediction.

    Attributes:
        tile_size: side of a square tile in network-input pixels (after ``scale``).
        overlap: smallest overlap of two neighbouring tiles in network-input pixels (at most half of
            ``tile_size``); the grid is spread evenly, so actual overlaps may be larger.
        batch_size: tiles run through the network at once.
        scale: network-input pixels per image pixel: 1 runs the model on native pixels; 0.5 halves the
            image first (a model trained on images downsized by 2), 2 doubles it. Maps are returned at the
            image's own size either way.
    """

    tile_size: int
    overlap: int = 64
    batch_size: int = 4
    scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int) or self.tile_size < 8:
            raise ValueError("model.init_args.predict_tile_size must be an integer >= 8 or null, got "
                             f"{self.tile_size!r}")
        if not 0 <= self.overlap <= self.tile_size // 2:
            raise ValueError("model.init_args.predict_tile_overlap must be in [0, predict_tile_size / 2 = "
                             f"{self.tile_size // 2}], got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"model.init_args.predict_tile_batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"model.init_args.predict_scale must be > 0, got {self.scale}")

    def source_tile(self) -> tuple[int, int]:
        """(tile side, overlap) in image pixels."""
        side = max(1, round(self.tile_size / self.scale))
        return side, min(side // 2, round(self.overlap / self.scale))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` with at least ``overlap`` in common.

    The first tile starts at 0, the last ends at ``length`` and the others are spread evenly between (so
    every tile has the same size and every overlap is >= ``overlap``); one tile when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def band_weights(band: int) -> Tensor:
    """Weight of the tile that ends in a band of ``band`` shared pixels, across the band (float32).

    1 over the first quarter, a cos² fall over the middle half (sampled at pixel centres), 0 over the last
    quarter (the tile's edge); the other tile's weight, ``1 - band_weights(band)``, mirrors it.
    """
    margin = band // 4
    ramp = band - 2 * margin
    fall = torch.cos(0.5 * math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp) ** 2
    return torch.cat([torch.ones(margin, dtype=torch.float64), fall, torch.zeros(margin, dtype=torch.float64)]).float()


def tile_window(size: int, before: int, after: int) -> Tensor:
    """1-D window of a tile of ``size``: rising across the ``before`` pixels it shares with the previous
    tile, falling across the ``after`` pixels it shares with the next, 1 elsewhere."""
    window = torch.ones(size, dtype=torch.float32)
    if before > 0:
        window[:before] *= 1.0 - band_weights(before)
    if after > 0:
        window[size - after:] *= band_weights(after)
    return window


def axis_windows(length: int, tile: int, overlap: int) -> tuple[list[int], list[Tensor], Tensor]:
    """Tile starts along one axis, each tile's 1-D window and the (length,) sum of the windows."""
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    windows, total = [], torch.zeros(length, dtype=torch.float32)
    for i, start in enumerate(starts):
        before = starts[i - 1] + size - start if i > 0 else 0
        after = start + size - starts[i + 1] if i + 1 < len(starts) else 0
        window = tile_window(size, before, after)
        windows.append(window)
        total[start:start + size] += window
    if float(total.min()) <= 0:  # cannot happen with overlap <= tile / 2; guards a division by zero
        raise RuntimeError(f"tiles of {tile} px overlapping by {overlap} leave pixels of a {length}-px side "
                           "without weight")
    return starts, windows, total


@dataclass(frozen=True)
class Tile:
    """One tile: its box in image pixels and its 2-D blending window."""

    top: int
    left: int
    height: int
    width: int
    row_window: Tensor
    col_window: Tensor


class TileGrid:
    """The tiles of an image of ``height`` x ``width`` (tile side and overlap in image pixels)."""

    def __init__(self, height: int, width: int, tile: int, overlap: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"cannot tile an empty image of {width}x{height} px")
        self.height, self.width = height, width
        rows, row_windows, self.row_total = axis_windows(height, tile, overlap)
        cols, col_windows, self.col_total = axis_windows(width, tile, overlap)
        th, tw = min(tile, height), min(tile, width)
        self.tiles = [Tile(top, left, th, tw, rw, cw) for top, rw in zip(rows, row_windows, strict=True)
                      for left, cw in zip(cols, col_windows, strict=True)]

    def __len__(self) -> int:
        return len(self.tiles)


def tile_count(height: int, width: int, settings: TileSettings) -> int:
    """How many tiles :func:`predict_tiled` runs on an image of ``height`` x ``width``."""
    side, overlap = settings.source_tile()
    return len(tile_starts(height, side, overlap)) * len(tile_starts(width, side, overlap))


def predict_tiled(image: Tensor, predict: Callable[[Tensor], Tensor], settings: TileSettings,
                  device: torch.device | str | None = None,
                  progress: Callable[[int], None] | None = None) -> Tensor:
    """The (C, H, W) float32 CPU map of a (3, H, W) image, predicted tile by tile and blended.

    Args:
        image: (3, H, W) image, on any device (keep a huge one on the CPU: tiles are copied to ``device``
            a batch at a time).
        predict: maps a (B, 3, h, w) batch of tiles on ``device`` to (B, C, h, w) maps.
        settings: tile side, overlap, tile batch size and scale (:class:`TileSettings`).
        device: where ``predict`` runs (default: the image's device).
        progress: called with the number of tiles done after every batch (a progress bar's ``advance``).

    Returns:
        The blended map at the image's own size, float32 on the CPU.
    """
    if image.ndim != 3:
        raise ValueError(f"predict_tiled expects one (3, H, W) image, got shape {tuple(image.shape)}")
    device = torch.device(device) if device is not None else image.device
    height, width = int(image.shape[-2]), int(image.shape[-1])
    side, overlap = settings.source_tile()
    grid = TileGrid(height, width, side, overlap)
    total: Tensor | None = None
    for first in range(0, len(grid), settings.batch_size):
        tiles = grid.tiles[first:first + settings.batch_size]
        batch = torch.stack([image[:, t.top:t.top + t.height, t.left:t.left + t.width] for t in tiles])
        batch = batch.to(device, non_blocking=True)
        source_size = tuple(batch.shape[-2:])
        if settings.scale != 1.0:
            size = (max(1, round(source_size[0] * settings.scale)), max(1, round(source_size[1] * settings.scale)))
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False,
                                  antialias=settings.scale < 1.0)
        maps = predict(batch).detach()
        if tuple(maps.shape[-2:]) != source_size:
            maps = F.interpolate(maps.float(), size=source_size, mode="bilinear", align_corners=False)
        maps = maps.float().cpu()
        if total is None:
            total = torch.zeros((maps.shape[1], height, width), dtype=torch.float32)
        for tile, tile_map in zip(tiles, maps, strict=True):
            weight = tile.row_window[:, None] * tile.col_window[None, :]
            total[:, tile.top:tile.top + tile.height, tile.left:tile.left + tile.width].addcmul_(tile_map, weight)
        if progress is not None:
            progress(len(tiles))
    assert total is not None  # a grid has at least one tile
    return total.div_(grid.row_total[None, :, None]).div_(grid.col_total[None, None, :])

