"""Weights & Biases offline: the resolved config, map panels (with extra maps) and the checkpoint artifact land
in the offline run folder, ready for ``wandb sync``; no account, no network."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from crackseg.cli import main

REPO = Path(__file__).resolve().parents[1]
BLOCK, CHUNK_HEADER = 32768, 7  # the run log's LevelDB log layout: 32 KiB blocks, chunks with 7-byte headers


def run_log_payload(path: Path) -> bytes:
    """The records of a ``run-*.wandb`` log joined without their chunk headers.

    A record longer than what is left of its 32 KiB block is split into chunks, each behind a 7-byte header
    (CRC, length, type), so a raw read can find a config string cut in two. Hand-written: wandb 0.31 no longer
    ships a Python reader of this file (it moved into the Go ``wandb-core``)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    payload, pos = [], CHUNK_HEADER  # the file header takes the first chunk header's room
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if room < CHUNK_HEADER or (kind == 0 and length == 0):  # zero padding up to the next block
            pos += room
            continue
        payload.append(data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
    return b"".join(payload)


def test_offline_run_holds_config_panels_and_checkpoint(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    wandb.finish()  # a run left open by an earlier in-process test would be reused by the WandbLogger
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(workdir / "wandb_dir"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    main(["fit", "--config", str(REPO / "configs/logger/wandb.yaml"), f"--trainer.logger.init_args.save_dir={workdir}",
          # Lightning refuses log_model with offline: true; WANDB_MODE=offline still keeps this run local
          "--trainer.logger.init_args.offline=false", "--trainer.logger.init_args.log_model=true",
          "--data", "SyntheticCracksDataModule", f"--data.init_args.root={workdir / 'data'}",
          "--data.init_args.n_train=2", "--data.init_args.n_val=2", "--data.init_args.n_test=2",
          "--data.init_args.generate_size=[32, 32]", "--data.init_args.crop_size=null",
          "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2", "--data.init_args.check_files=none",
          "--model", "SCNet", "--model.init_args.width_multiplier=0.0625", "--model.init_args.levels=2",
          "--model.init_args.gradcam_maps=true", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={workdir / 'ckpt'}",
          "--trainer.callbacks+=MapLogger", "--trainer.callbacks.max_images=2"])
    wandb.finish()  # what the end of the `crackseg fit` process does: the run folder is complete
    runs = list(workdir.rglob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {workdir}, found {runs}"
    run = runs[0]
    assert list(run.glob("run-*.wandb")), "no run log for `wandb sync`"

    # the resolved config: in the run log (the offline run keeps its config there until `wandb sync`) and the
    # crackseg YAML among the run files
    log = b"".join(run_log_payload(path) for path in run.glob("run-*.wandb")).decode("utf-8", "replace")
    start = log.find('{"class_path":"crackseg.lightning_modules.SCNet"')
    assert start >= 0, "the model's config is not in the W&B run"
    model, _ = json.JSONDecoder().raw_decode(log[start:])
    assert model["init_args"]["width_multiplier"] == 0.0625 and model["init_args"]["gradcam_maps"] is True
    assert '"max_epochs":1' in log and '"n_train":2' in log
    saved = yaml.safe_load((run / "files/crackseg_config.yaml").read_text())
    assert saved["model"]["init_args"]["gradcam_maps"] is True
    assert saved["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"

    # map panels as W&B images: input | GT | map | mask | P1 P2 | attention_1 attention_2 | Grad-CAM
    images = sorted((run / "files/media/images").glob("val/maps_*.png"))
    assert len(images) == 2
    panel = np.asarray(Image.open(images[0]))
    assert panel.shape[:2] == (32, 9 * 32 + 8 * 4)

    # the checkpoint as an artifact (log_model: true), queued in the run log for `wandb sync`
    assert f"model-{run.name.rsplit('-', 1)[-1]}" in log


def test_run_log_payload_joins_records_split_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    wandb.finish()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # dir and mode given here: wandb's settings singleton keeps the WANDB_DIR an earlier in-process test set
    run = wandb.init(project="crackseg-test", dir=tmp_path, mode="offline")
    values = {f"key{i:04d}": f"value{i:04d}-" + "x" * 40 for i in range(2000)}  # ~100 KiB: several blocks
    run.config.update(values)
    run.finish()
    (path,) = tmp_path.rglob("run-*.wandb")
    assert path.stat().st_size > 3 * BLOCK
    raw, payload = path.read_bytes(), run_log_payload(path)
    assert all(value.encode() in payload for value in values.values())
    assert not all(value.encode() in raw for value in values.values())  # a raw read loses the values cut by a header
