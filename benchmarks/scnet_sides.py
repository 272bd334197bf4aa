"""How each output of trained SCNet-family networks ranks crack pixels: the fused map and every side output.

    python -m benchmarks.scnet_sides --run SCNet=runs/.../SCNet_CrackForest --run HCNN=runs/.../HCNN_CrackForest \\
        [--checkpoint last.ckpt] [--dataset CrackForest] [--root DIR] [--write]

For each run (a ``benchmarks.run`` row folder) the checkpoint is evaluated on the test split of the dataset
(CrackForest: the rows' 20 % hold-out, seed 0; DeepCrack: its test folder) at full image size: pixel AUROC
and the best-threshold F1 over the test set (the paper's F1, ``ods_dataset``, thresholds 0.01 … 0.99) of the fused
probability map (eq. 4) and of each side output (eq. 3, finest scale first), and the weights of the 1×1
convolution that fuses the side logits. An AUROC below 0.5 means the output ranks cracks *below* background;
a side that ranks well but enters the fusion with a negative weight drags the fused map down.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import (
    SHARED_DATA,
    add_run_arguments,
    commit,
    machine,
    run_checkpoints,
    usable_cores,
    write_section,
)
from benchmarks.run import CFD_SPLIT
from crackseg.datamodules import CrackForestDataModule, DeepCrackDataModule
from crackseg.lightning_modules import SCNet
from crackseg.metrics import BinnedCurves, ThresholdSweepF1

DATASETS = {"CrackForest": (CrackForestDataModule, "cfd", CFD_SPLIT),
            "DeepCrack": (DeepCrackDataModule, "deepcrack", {})}


class OutputScores:
    """Pixel AUROC and best-threshold dataset F1 of one output, accumulated over batches, with the metric code of
    the test rows (:class:`BinnedCurves`, 1000 bins; :class:`ThresholdSweepF1` at 0.01 … 0.99, TP / FP / FN summed
    over the set: ``test/ods_dataset``)."""

    def __init__(self) -> None:
        self.curves = BinnedCurves()
        self.sweep = ThresholdSweepF1(average="dataset")

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        probs, target = torch.sigmoid(logits), (masks > 0.5).long()
        self.curves.update(probs, target)
        self.sweep.update(probs, target)

    def compute(self) -> tuple[float, float]:
        return float(self.curves.compute()["auroc"]), float(self.sweep.compute()["ods"])


def evaluate(model: SCNet, loader: torch.utils.data.DataLoader) -> dict[str, tuple[float, float]]:
    """``{"fused" | "side 1" …: (AUROC, best F1)}`` of ``model`` over ``loader``'s images."""
    scores: dict[str, OutputScores] = {}
    with torch.no_grad():
        for batch in loader:
            outputs = model(batch["image"])
            named = {"fused": outputs["logits"],
                     **{f"side {i + 1}": side for i, side in enumerate(outputs["side_logits"])}}
            for name, logits in named.items():
                scores.setdefault(name, OutputScores()).update(logits, batch["mask"])
    return {name: score.compute() for name, score in scores.items()}


def table(results: dict[str, tuple[dict[str, tuple[float, float]], list[float]]]) -> str:
    """Markdown table: one row per run, AUROC / F1 of each output, the fusion weights."""
    names = list(next(iter(results.values()))[0])
    lines = ["| run | " + " | ".join(f"{n} AUROC / F1" for n in names) + " | fusion weights (side 1, 2, …) |",
             "|---|" + "---|" * (len(names) + 1)]
    for run, (scores, weights) in results.items():
        cells = [f"{100 * auroc:.1f} / {100 * f1:.1f}" for auroc, f1 in (scores[n] for n in names)]
        lines.append(f"| {run} | " + " | ".join(cells) + " | " + ", ".join(f"{w:+.2f}" for w in weights) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="CrackForest")
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (default: ../shared/data/<name>)")
    parser.add_argument("--section", default="scnet_sides", help="section of RESULTS.md --write replaces")
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    checkpoints = run_checkpoints(parser, opts)
    torch.set_num_threads(usable_cores())
    cls, folder, split = DATASETS[opts.dataset]
    datamodule = cls(root=opts.root or SHARED_DATA / folder, batch_size=1, eval_batch_size=1, **split)
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    results = {}
    for name, checkpoint in checkpoints.items():
        model = SCNet.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
        results[name] = (evaluate(model, loader), model.net.final.weight.flatten().tolist())
        print(name, results[name], flush=True)
    text = (f"## SCNet outputs: how the fused map and each side output rank crack pixels ({opts.dataset} test)\n\n"
            f"Command: `python -m benchmarks.scnet_sides {' '.join(argv if argv is not None else sys.argv[1:])}`; "
            f"machine: {machine()}; commit {commit()}; checkpoint `{opts.checkpoint}` of each row; "
            f"{len(loader.dataset)} test images at full size; pixel AUROC and best-threshold dataset F1 "
            "(`ods_dataset`) in %.\n\n" + table(results))
    print(text)
    if opts.write:
        write_section(opts.section, text)
    return text


if __name__ == "__main__":
    main()
