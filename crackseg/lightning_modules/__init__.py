"""LightningModules, one per method; configs name them by short ``class_path``."""

from crackseg.lightning_modules.base import CrackSegModule
from crackseg.lightning_modules.classifier import CrackClassifier
from crackseg.lightning_modules.feature_ae import DFR, FeatureReconstruction, SkipAE
from crackseg.lightning_modules.msflow import ExtractorPretraining, MSFlow
from crackseg.lightning_modules.scnet import SCNet
from crackseg.lightning_modules.segmentation import (
    OED,
    DeepCrackLiu,
    DeepCrackZou,
    EncoderDecoder,
    SupervisedSegmentation,
    UNet,
)
from crackseg.lightning_modules.vae import VAEGradCAM

__all__ = ["CrackSegModule", "DeepCrackLiu", "SCNet", "SupervisedSegmentation", "UNet", "VAEGradCAM"]
__all__ += ["DFR", "FeatureReconstruction", "SkipAE"]
__all__ += ["ExtractorPretraining", "MSFlow"]
__all__ += ["CrackClassifier", "DeepCrackZou", "OED"]
__all__ += ["EncoderDecoder"]
