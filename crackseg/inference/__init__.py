"""Inference beyond the Lightning steps: tiled full-resolution prediction and crack quantification."""

from crackseg.inference.quantify import crack_fields, quantify_cracks, skeleton_length
from crackseg.inference.tiling import TileGrid, TileSettings, predict_tiled, tile_count, tile_starts

__all__ = ["TileGrid", "TileSettings", "crack_fields", "predict_tiled", "quantify_cracks", "skeleton_length",
           "tile_count", "tile_starts"]
