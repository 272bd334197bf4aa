"""Plain ``nn.Module`` networks; Lightning wrappers live in :mod:`crackseg.lightning_modules`.

Every segmentation network maps a normalised image batch (B, C, H, W) to a dict with ``"logits"``
(B, 1, H, W) and, for deeply supervised networks, ``"side_logits"`` (list of (B, 1, H, W)). Its
``stride`` attribute says which multiple H and W must be (the Lightning module pads to it).
"""

from crackseg.models.classifier import CrackClassifierNet
from crackseg.models.deepcrack import DeepCrackLiuModel
from crackseg.models.deepcrack_zou import DeepCrackZouModel
from crackseg.models.encoder_decoder import EncoderDecoderModel
from crackseg.models.feature_ae import DFRModel, FeatureExtractor, SkipAEModel
from crackseg.models.oed import OEDModel
from crackseg.models.scnet import SCNetModel
from crackseg.models.unet import UNetModel
from crackseg.models.vae import ConvVAE

__all__ = ["ConvVAE", "DeepCrackLiuModel", "SCNetModel", "UNetModel"]
__all__ += ["DFRModel", "FeatureExtractor", "SkipAEModel"]
__all__ += ["CrackClassifierNet", "DeepCrackZouModel", "OEDModel"]
__all__ += ["EncoderDecoderModel"]
