"""benchmarks.profile_feature_ae: the parts of a feature autoencoder's inference time, from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from benchmarks import profile_feature_ae
from crackseg.lightning_modules import DFR, SkipAE


@pytest.mark.parametrize("cls", [SkipAE, DFR])
def test_profile_reads_the_checkpoint_and_times_every_part(cls: type, tmp_path: Path) -> None:
    extra = {"base_channels": 4, "depth": 2} if cls is SkipAE else {"layers": None, "latent_dim": 4}
    model = cls(backbone="resnet18", blocks=(1,), weights=None, **extra)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)

    loaded = profile_feature_ae.load(checkpoint)
    assert type(loaded) is cls
    rows = profile_feature_ae.profile(loaded, size=32, batches=(1, 2), runs=1, warmup=0, chunks=(None, 1))
    assert [name.split(" ")[0] for name, _, _ in rows[:4]] == ["extractor", "autoencoder", "map", "whole:"]
    assert [name for name, _, _ in rows][-2:] == ["whole, inference_chunk None", "whole, inference_chunk 1"]
    assert loaded.net.inference_chunk == 4  # the model's own setting is restored
    assert all(len(times) == 2 and all(t > 0 for t in times) for _, _, times in rows)
    params = {name.split(" ")[0]: count for name, count, _ in rows[:4]}
    assert params["whole:"] == params["extractor"] + params["autoencoder"] > params["autoencoder"] > 0
