"""Datamodules: one per dataset layout, all subclasses of :class:`CrackDataModule`."""

from crackseg.datamodules.base import CrackDataModule
from crackseg.datamodules.crack500 import Crack500DataModule
from crackseg.datamodules.crackforest import CrackForestDataModule
from crackseg.datamodules.deepcrack import DeepCrackDataModule
from crackseg.datamodules.folder import FolderDataModule
from crackseg.datamodules.joined import JoinedDataModule
from crackseg.datamodules.kolektor import KolektorSDD2DataModule
from crackseg.datamodules.magnetic_tile import MagneticTileDataModule
from crackseg.datamodules.mvtec import MVTecADDataModule
from crackseg.datamodules.ozgenel import OzgenelDataModule
from crackseg.datamodules.patches import PatchClassificationDataModule
from crackseg.datamodules.poisson import PoissonBlend
from crackseg.datamodules.synthetic import SyntheticCracksDataModule

__all__ = [
    "CrackDataModule",
    "Crack500DataModule",
    "CrackForestDataModule",
    "DeepCrackDataModule",
    "FolderDataModule",
    "JoinedDataModule",
    "KolektorSDD2DataModule",
    "MVTecADDataModule",
    "MagneticTileDataModule",
    "OzgenelDataModule",
    "PatchClassificationDataModule",
    "PoissonBlend",
    "SyntheticCracksDataModule",
]
