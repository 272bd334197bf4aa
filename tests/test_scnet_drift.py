"""benchmarks.scnet_drift: relative weight change of each SCNet part from its rebuilt initialisation."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks import scnet_drift
from crackseg.lightning_modules import SCNet
from tests.fakes import make_crackforest, save_lightning_checkpoint


def test_untrained_row_has_zero_drift_and_a_changed_part_shows(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = SCNet(width_multiplier=0.0625, levels=2, edges=False)
    checkpoint = save_lightning_checkpoint(model, tmp_path / "a" / "checkpoints" / "last.ckpt")
    changes, gate_bias, _ = scnet_drift.drift(checkpoint)
    assert set(changes) == {"encoder", "decoder", "gate", "side", "fuse", "final"}
    assert all(v == 0 for values in changes.values() for v in values) and gate_bias == 0

    with torch.no_grad():
        model.net.final.weight.mul_(1.5)
    save_lightning_checkpoint(model, tmp_path / "b" / "checkpoints" / "last.ckpt")
    text = scnet_drift.main(["--run", f"moved={tmp_path / 'b'}"])
    changes, _, _ = scnet_drift.drift(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert abs(changes["final"][0] - 0.5) < 1e-6 and all(v == 0 for v in changes["encoder"])
    assert "| moved | 0 | 0.0 (0.0) |" in text and "50.0 (50.0)" in text


def test_hcnn_rows_have_no_gates(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = SCNet(width_multiplier=0.0625, levels=2, edges=False, attention="none")
    changes, gate_bias, _ = scnet_drift.drift(save_lightning_checkpoint(model, tmp_path / "checkpoints" / "last.ckpt"))
    assert "gate" not in changes and gate_bias is None


def test_gradient_norms_at_initialisation_per_part(tmp_path: Path) -> None:
    root = make_crackforest(tmp_path / "cfd", n=10)
    pl.seed_everything(0, verbose=False)
    model = SCNet(width_multiplier=0.0625, levels=2, edges=False)
    save_lightning_checkpoint(model, tmp_path / "run" / "checkpoints" / "last.ckpt")
    text = scnet_drift.main(["--run", f"tiny={tmp_path / 'run'}", "--gradients", "--batches", "1",
                             "--root", str(root)])
    row = text.strip().splitlines()[-1]
    assert row.startswith("| tiny |")
    norms = [float(v) for v in row.strip("|").split("|")[1:]]
    assert len(norms) == len(scnet_drift.PARTS) and all(v > 0 for v in norms)
