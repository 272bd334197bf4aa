"""benchmarks.scnet_sides: AUROC / best F1 of SCNet's fused and side outputs from a trained row's checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks import scnet_sides
from crackseg.lightning_modules import SCNet


def test_output_scores_rank_and_f1() -> None:
    score = scnet_sides.OutputScores()
    masks = torch.zeros(1, 1, 4, 4)
    masks[..., 0, :] = 1
    score.update(torch.where(masks > 0, 5.0, -5.0), masks)  # perfect ranking
    assert score.compute() == (1.0, 1.0)
    inverted = scnet_sides.OutputScores()
    inverted.update(torch.where(masks > 0, -3.0, 3.0), masks)  # cracks at p 0.047, inside the sweep
    auroc, f1 = inverted.compute()
    assert auroc == 0.0 and math.isclose(f1, 2 * 0.25 / 1.25, rel_tol=1e-6)  # best: everything positive


def test_evaluate_a_checkpoint(tmp_path: Path) -> None:
    model = SCNet(width_multiplier=0.0625, levels=2, edges=False)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    (tmp_path / "checkpoints").mkdir()
    trainer.save_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    loaded = SCNet.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True).eval()
    masks = (torch.rand(2, 1, 32, 32) > 0.9).float()
    batches = [{"image": torch.rand(2, 3, 32, 32), "mask": masks}]
    results = scnet_sides.evaluate(loaded, batches)
    assert list(results) == ["fused", "side 1", "side 2"]
    assert all(0 <= auroc <= 1 and 0 < f1 <= 1 for auroc, f1 in results.values())
    text = scnet_sides.table({"tiny": (results, loaded.net.final.weight.flatten().tolist())})
    row = text.splitlines()[2]
    assert row.startswith("| tiny | ") and row.count("/") == 3 and row.endswith(" |")
