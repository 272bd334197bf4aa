"""LightningModules, one per method; configs name them by short ``class_path``."""

from crackseg.lightning_modules.base import CrackSegModule
from crackseg.lightning_modules.scnet import SCNet
from crackseg.lightning_modules.segmentation import DeepCrackLiu, SupervisedSegmentation, UNet

__all__ = ["CrackSegModule", "DeepCrackLiu", "SCNet", "SupervisedSegmentation", "UNet"]
