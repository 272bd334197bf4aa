"""Several datasets at once: training splits joined (a weight per source), validation and test per source."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

from crackseg.data.dataset import collate
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule


class JoinedDataModule(CrackDataModule):
    """Train on the union of several datamodules' training splits; validate and test on each source apart.

    Each source keeps its own layout, augmentation, crops and hold-outs; this module only draws training
    batches from all of them. A source of weight w_s and n_s training images has each image drawn with
    probability ∝ w_s / n_s, so the sources make up the shares ``weights`` of every epoch however many images
    each holds (equal weights: as many DeepCrack as synthetic images per epoch). Validation and test run
    over one loader per source: the model logs ``val/<name>/<metric>`` / ``test/<name>/<metric>`` for each
    and the usual ``val/<metric>`` (checkpoint monitor, threshold calibration) over all of them.

    Args:
        sources: the datamodules (``class_path`` + ``init_args`` each, e.g. a ``DeepCrackDataModule`` and a
            ``FolderDataModule`` of your own images). Their training crops must be of one size.
        names: a name per source for the logged metrics; None = the class names without ``DataModule``,
            lower case (``deepcrack``, ``folder``, ...).
        weights: share of each source in a training epoch (any positive numbers); None = in proportion to
            the sources' sizes (plain concatenation).
        samples_per_epoch: training images drawn per epoch; None = all sources' training images together.
        batch_size: training batch size (the sources' own ``batch_size`` is not used for training).
        seed: seed of the weighted draw.
    """

    def __init__(self, sources: Sequence[CrackDataModule], names: Sequence[str] | None = None,
                 weights: Sequence[float] | None = None, samples_per_epoch: int | None = None,
                 batch_size: int = 4, seed: int = 0) -> None:
        # a CrackDataModule for the CLI (its data class) whose images are its sources': none of the base's
        # per-dataset options apply, so only LightningDataModule's set-up runs
        LightningDataModule.__init__(self)
        self.datasets, self.skipped, self.predict_path = {}, [], None
        sources = list(sources)
        if len(sources) < 1 or not all(isinstance(s, CrackDataModule) for s in sources):
            raise ValueError("data.init_args.sources must list one or more crackseg datamodules")
        names = [type(s).__name__.removesuffix("DataModule").lower() for s in sources] if names is None \
            else list(names)
        if len(names) != len(sources) or len(set(names)) != len(names):
            raise ValueError(f"data.init_args.names must give {len(sources)} distinct names, got {names}")
        if weights is not None and (len(weights) != len(sources) or any(w <= 0 for w in weights)):
            raise ValueError(f"data.init_args.weights must give {len(sources)} positive weights, got {list(weights)}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"data.init_args.samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if batch_size < 1:
            raise ValueError(f"data.init_args.batch_size must be >= 1, got {batch_size}")
        # the training images' side: the crop, else the size every image is resized to
        sizes = {s.crop_size if s.crop_size is not None else s.image_size for s in sources}
        if len(sizes) > 1 or None in sizes:
            raise ValueError("the sources of JoinedDataModule must give training images of one size (the same "
                             f"crop_size, or the same image_size without crop); got (crop_size, image_size) "
                             f"{[(s.crop_size, s.image_size) for s in sources]}")
        self.sources, self.names = sources, names
        self.weights = None if weights is None else [float(w) for w in weights]
        self.samples_per_epoch = samples_per_epoch
        self.batch_size, self.seed = batch_size, seed

    @property
    def eval_source_names(self) -> list[str]:
        """Names of the validation / test loaders, in order (the model logs each loader's metrics under it)."""
        return list(self.names)

    def split_samples(self) -> dict[str, list]:
        raise NotImplementedError("JoinedDataModule has no samples of its own: see its sources' split_samples()")

    def prepare_data(self) -> None:
        for source in self.sources:
            source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            raise DataError("crackseg predict reads one dataset: give the config of one source (its --data) "
                            "instead of JoinedDataModule")
        for source in self.sources:
            source.trainer = self.trainer
            source.setup(stage)

    def train_dataloader(self) -> DataLoader:
        datasets = [source.datasets["train"] for source in self.sources]
        for name, dataset in zip(self.names, datasets, strict=True):
            if len(dataset) == 0:
                raise DataError(f"source {name!r} of JoinedDataModule has no training images")
        joined = ConcatDataset(datasets)
        sizes = [len(d) for d in datasets]
        shares = self.weights or [float(n) for n in sizes]
        per_image = torch.cat([torch.full((n,), w / sum(shares) / n) for w, n in zip(shares, sizes, strict=True)])
        sampler = WeightedRandomSampler(per_image.double(), self.samples_per_epoch or len(joined), replacement=True,
                                        generator=torch.Generator().manual_seed(self.seed))
        workers = max(s.num_workers for s in self.sources)
        return DataLoader(joined, batch_size=self.batch_size, sampler=sampler, drop_last=len(joined) > self.batch_size,
                          num_workers=workers, persistent_workers=workers > 0, collate_fn=collate)

    def val_dataloader(self) -> list[DataLoader]:
        return [source.val_dataloader() for source in self.sources]

    def test_dataloader(self) -> list[DataLoader]:
        return [source.test_dataloader() for source in self.sources]
