"""DDP parity: ``fit`` + ``test`` on 2 CPU processes (gloo) gives the threshold and metrics of 1 process.

Each run calls ``crackseg fit`` through :func:`crackseg.cli.main`, then tests the fitted model in the same
process(es); rank 0 returns the calibrated thresholds, the test metrics and the weights. The single-process
run happens in the pytest process; the DDP run is a subprocess (``python tests/test_distributed.py RESULT.json
ARGS...``, this file's ``__main__`` block) whose command line Lightning's DDP launcher re-executes for rank 1,
as it does for ``crackseg fit``.

For the two runs to be the same computation they see the same data and the same gradients:

- the same global batch: 1 process × 4 images against 2 processes × 2 images (DDP averages the two
  per-process mean gradients: the mean over the 4 images);
- split sizes divisible by 2 (``DistributedSampler`` would pad with a repeated image otherwise);
- no shuffling (``data.shuffle: false``) and no random augmentation: global batch k holds the same images
  (process 0 gets images 0, 2, ..., process 1 images 1, 3, ...);
- no BatchNorm statistics from a per-process batch: SCNet uses instance norm, DFR runs without its AE's
  BatchNorm (``batch_norm: false``; its frozen extractor's BatchNorm is in eval mode). ``SyncBatchNorm`` would
  do on GPUs, PyTorch has no CPU implementation;
- the same seed (``seed_everything``), one intra-op thread per process.

The validation and test splits are sharded over the ranks (each rank sees half of the images, checked), so
equal metrics show that the metric states, the threshold callbacks' scores and DFR's PCA step are reduced
over the ranks. DFR's AE is built in ``setup`` from the run's seed, so both runs also start from the same weights.

Tolerance: the two runs add the same numbers in a different order (the gradient all-reduce, the metric and
score gathers, the PCA moments), so they agree to float32 rounding, not bit for bit. Measured: weights after
two SGD steps within 1.2e-7, thresholds within 2e-7 relative, metrics within 1.4e-5. Asserted: weights
1e-5 relative + 1e-6 absolute, thresholds 1e-5 relative, metrics 1e-4 absolute; the pixel-count metrics at
the threshold (F1 / Dice, IoU, precision, recall) may also move by two pixels' worth (2 / crack pixels),
as a test pixel lying within rounding of the threshold flips. SGD, not Adam, in both runs: Adam's first
steps are ±lr for any gradient above its epsilon, which turns rounding noise in near-zero gradients
into lr-sized weight differences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
GLOBAL_BATCH = 4

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _data(root: Path, mode: str, batch_size: int) -> list[str]:
    """Tiny synthetic splits, in order, without augmentation; every size divisible by the world size."""
    return [
        "--data", "SyntheticCracksDataModule", f"--data.init_args.root={root}", f"--data.init_args.mode={mode}",
        "--data.init_args.n_train=8", "--data.init_args.n_val=4", "--data.init_args.n_test=4",
        "--data.init_args.generate_size=[64, 64]", "--data.init_args.crop_size=null",
        "--data.init_args.rotate_limit=0", "--data.init_args.flip=false", "--data.init_args.shuffle=false",
        f"--data.init_args.batch_size={batch_size}", "--data.init_args.eval_batch_size=2",
        "--data.init_args.check_files=none",
    ]


METHODS: dict[str, dict[str, Any]] = {
    # supervised; pixel threshold by F1Threshold (exact sweep over the gathered validation pixels)
    "SCNet": {  # instance norm: no BatchNorm statistics
        "mode": "supervised",
        "args": ["--model", "SCNet", "--model.init_args.width_multiplier=0.0625", "--model.init_args.levels=3",
                 "--model.init_args.optimizer=sgd", "--model.init_args.lr=0.05", "--model.init_args.momentum=0.9",
                 "--trainer.callbacks+=F1Threshold", "--trainer.callbacks.level=both"],
        "thresholds": ("pixel_threshold", "image_threshold"),
    },
    # unsupervised; latent width by PCA of the first global batch, thresholds by MeanStdThreshold
    "DFR": {
        "mode": "unsupervised",
        "args": ["--model", "DFR", "--model.init_args.backbone=resnet18", "--model.init_args.blocks=[1, 2]",
                 "--model.init_args.layers=null", "--model.init_args.weights=null",
                 "--model.init_args.batch_norm=false", "--model.init_args.optimizer=sgd", "--model.init_args.lr=0.5",
                 "--trainer.callbacks+=MeanStdThreshold", "--trainer.callbacks.level=both"],
        "thresholds": ("pixel_threshold", "image_threshold"),
    },
}


def _run(method: str, devices: int, workdir: Path, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], float]:
    """Fit and test ``method`` on ``devices`` CPU processes: in this process for 1, in subprocesses for DDP;
    ``extra`` arguments come last."""
    spec = METHODS[method]
    out = workdir / f"{method}_{devices}.json"
    args = ["fit", *_data(workdir / "data", spec["mode"], GLOBAL_BATCH // devices), *spec["args"],
            "--seed_everything=0", "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
            f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}", "--trainer.max_epochs=1",
            "--trainer.num_sanity_val_steps=0", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--default_callbacks=false",  # only the callbacks under comparison (no panels or prediction files)
            f"--trainer.default_root_dir={workdir / f'{method}_{devices}'}", *extra]
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
               PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    if devices == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = _fit_and_test(args)
        finally:
            torch.set_num_threads(threads)
        assert result is not None
        return result, time.perf_counter() - start
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"{method} under DDP failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text()), elapsed


# pixel counts at the threshold: a pixel within rounding of the threshold flips them by about 1 / crack pixels
COUNT_METRICS = {"test/f1", "test/dice", "test/iou", "test/precision", "test/recall"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ddp_matches_single_process(method: str, workdir: Path) -> None:
    single, t_single = _run(method, 1, workdir)
    ddp, t_ddp = _run(method, WORLD_SIZE, workdir)
    print(f"{method}: 1 process {t_single:.1f} s, {WORLD_SIZE} processes {t_ddp:.1f} s")

    # the DDP run really was sharded: each rank trained on and evaluated half of the images
    assert ddp["world_size"] == WORLD_SIZE and single["world_size"] == 1
    assert sorted(ddp["seen"]["test"]) == [2, 2] and single["seen"]["test"] == [4]
    assert sorted(ddp["seen"]["val"]) == [2, 2] and single["seen"]["val"] == [4]
    assert sorted(ddp["seen"]["train"]) == [4, 4] and single["seen"]["train"] == [8]

    # same training: the weights after the same two global steps
    assert single["weights"].keys() == ddp["weights"].keys()
    for name, value in single["weights"].items():
        a, b = torch.tensor(value), torch.tensor(ddp["weights"][name])
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"{method} weight {name} differs: {a} vs {b}"

    for name in METHODS[method]["thresholds"]:
        assert ddp["thresholds"][name] == pytest.approx(single["thresholds"][name], rel=1e-5), name
    assert single["thresholds"]["pixel_threshold"] != 0.5  # calibrated, not the default

    assert single["test"].keys() == ddp["test"].keys()
    assert len(single["test"]) >= 10
    for key, value in single["test"].items():
        other = ddp["test"][key]
        if value != value:  # nan (e.g. a metric undefined on this data) must be nan in both
            assert other != other, key
            continue
        tolerance = 1e-4
        if key in COUNT_METRICS:
            tolerance = max(tolerance, 2.0 / single["crack_pixels"])
        assert other == pytest.approx(value, abs=tolerance), f"{method} {key}: 1 process {value}, DDP {other}"


def test_ddp_fit_with_map_panels_finishes(workdir: Path) -> None:
    """MapLogger writes on rank 0 only; it once asked ``trainer.log_dir``, a broadcast rank 1 never joined, and
    a 2-process fit waited forever at the first validation. Now the run ends and rank 0 wrote the panels."""
    _, elapsed = _run("SCNet", WORLD_SIZE, workdir, ("--trainer.callbacks+=MapLogger",
                                                     "--trainer.callbacks.max_images=1"))
    panels = sorted((workdir / f"SCNet_{WORLD_SIZE}" / "maps").glob("*.png"))
    assert [p.name.split("_epoch")[0] for p in panels] == ["test_maps", "val_maps"], panels
    print(f"DDP fit + test with map panels: {elapsed:.1f} s")


# -- the run ---------------------------------------------------------------------------------------
def _fit_and_test(args: list[str]) -> dict[str, Any] | None:
    """``crackseg fit ARGS``, then test the fitted model; rank 0 returns what the test compares."""
    from lightning import Callback

    from crackseg.cli import main

    seen: dict[str, int] = {"train": 0, "val": 0, "test": 0}

    class CountSamples(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen["train"] += len(batch["image"])

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                    dataloader_idx: int = 0) -> None:
            seen["val"] += len(batch["image"])

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                              dataloader_idx: int = 0) -> None:
            seen["test"] += len(batch["image"])

    cli = main(args)
    trainer, model = cli.trainer, cli.model
    trainer.callbacks.append(CountSamples())  # test only: fit counts come from the loop below
    seen["train"] = trainer.fit_loop.epoch_loop.batch_progress.total.completed * cli.datamodule.batch_size
    seen["val"] = len(trainer.val_dataloaders.sampler)  # type: ignore[union-attr]
    trainer.test(model, datamodule=cli.datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    crack_pixels = sum(int(batch["mask"].sum()) for batch in cli.datamodule.test_dataloader())
    gathered = trainer.strategy.all_gather(torch.tensor([seen["train"], seen["val"], seen["test"]]))
    if trainer.world_size == 1:
        gathered = gathered[None]
    if not trainer.is_global_zero:
        return None
    weights = {name: value.flatten()[:64].tolist() for name, value in model.state_dict().items()
               if value.is_floating_point() and value.numel() > 1 and "extractor" not in name}
    return {
        "world_size": trainer.world_size,
        "seen": {stage: gathered[:, i].tolist() for i, stage in enumerate(("train", "val", "test"))},
        "thresholds": {name: float(getattr(model, name)) for name in ("pixel_threshold", "image_threshold")},
        "test": metrics,
        "crack_pixels": crack_pixels,
        "weights": weights,
    }


if __name__ == "__main__":  # a DDP run: python tests/test_distributed.py RESULT.json FIT_ARGS...
    torch.set_num_threads(1)
    _result = _fit_and_test(sys.argv[2:])
    if _result is not None:
        Path(sys.argv[1]).write_text(json.dumps(_result))
