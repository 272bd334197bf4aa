"""How far training moved each part of SCNet / HCNN from its initialisation (cpu-converge rows).

    python -m benchmarks.scnet_drift --run SCNet=runs/bench/cpu-converge/SCNet_CrackForest \\
        --run HCNN=runs/bench/cpu-converge/HCNN_CrackForest [--write --section scnet_drift_cfd]

For each row the initial network is rebuilt from the checkpoint's hyper-parameters after
``seed_everything(--seed)`` (the configs' ``seed_everything: 0``, set before the model is built, so the same
draws give the same weights); the table gives, per part, the median and largest relative change
``‖W_last − W_init‖ / ‖W_init‖`` of its weight tensors. A rebuilt initialisation that is not the run's own
would show changes near 1 or above in every part (two independent Xavier draws are ~√2 apart); the trunk's
small figures under SGD are the check that it is the run's. Parts: the VGG trunk's convolutions (encoder,
decoder), the attention gates ``Conv¹`` of eq. 1, the side convolutions ``Conv²`` (``F_r``), the per-scale fusion
1×1 convolutions (eq. 2) and the final fusion (eq. 4); and the largest |bias| of the gates (0 at initialisation).

``--gradients`` adds, per row, the norm of the training loss's gradient with respect to each part of the
rebuilt initial network on the first ``--batches`` training batches of CrackForest (the rows' split, their
256² crops, unshuffled): SGD's step is proportional to it, Adam's is not.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks.common import SHARED_DATA, add_run_arguments, commit, machine, run_checkpoints, write_section
from benchmarks.run import CFD_SPLIT
from crackseg.datamodules import CrackForestDataModule
from crackseg.lightning_modules import SCNet

PARTS = ("encoder", "decoder", "gate", "side", "fuse", "final")


def initial_model(checkpoint: Path, seed: int = 0) -> tuple[SCNet, dict]:
    """(the row's network as it was initialised, the checkpoint)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    pl.seed_everything(seed, verbose=False)
    return SCNet(**hparams), state


def part_of(name: str) -> str:
    """The :data:`PARTS` entry a parameter of ``SCNetModel`` belongs to."""
    if ".gate." in name:
        return "gate"
    if ".refine." in name:
        return "side"
    for part in ("fuse", "final", "encoder", "decoder"):
        if name.startswith(part):
            return part
    return "other"


def drift(checkpoint: Path, seed: int = 0) -> tuple[dict[str, list[float]], float | None, int]:
    """({part: [relative change of each weight tensor]}, largest |gate bias| or None, the checkpoint's step)."""
    model, state = initial_model(checkpoint, seed)
    initial = model.net
    trained = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    changes: dict[str, list[float]] = {}
    gate_bias = None
    for name, start in initial.named_parameters():
        start, end = start.detach(), trained[name]
        if name.endswith("weight"):
            changes.setdefault(part_of(name), []).append(float((end - start).norm() / start.norm().clamp_min(1e-12)))
        elif part_of(name) == "gate":
            gate_bias = max(gate_bias or 0.0, float(end.abs().max()))
    return changes, gate_bias, int(state.get("global_step", 0))


def init_gradients(checkpoint: Path, batches: list[dict], seed: int = 0) -> dict[str, float]:
    """{part: norm of the summed training-loss gradient of its weights over ``batches``} at initialisation."""
    model, _ = initial_model(checkpoint, seed)
    model.train()
    for batch in batches:
        model.compute_loss(model.training_outputs(batch), batch)["loss"].backward()
    squares: dict[str, float] = {}
    for name, parameter in model.net.named_parameters():
        if name.endswith("weight") and parameter.grad is not None:
            squares[part_of(name)] = squares.get(part_of(name), 0.0) + float(parameter.grad.pow(2).sum())
    return {part: value**0.5 for part, value in squares.items()}


def training_batches(root: Path, count: int) -> list[dict]:
    """The first ``count`` training batches of CrackForest with the cpu-converge rows' split, unshuffled."""
    datamodule = CrackForestDataModule(root=root, **CFD_SPLIT)
    datamodule.setup("fit")
    loader = torch.utils.data.DataLoader(datamodule.train_dataloader().dataset, batch_size=datamodule.batch_size)
    pl.seed_everything(0, verbose=False)  # the random crops
    return [batch for _, batch in zip(range(count), loader, strict=False)]


def gradient_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| row | " + " | ".join(PARTS) + " |", "|---|" + "---|" * len(PARTS)]
    for name, norms in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{norms[p]:.3g}" if p in norms else "–" for p in PARTS) + " |")
    return "\n".join(lines)


def table(rows: dict[str, tuple[dict[str, list[float]], float | None, int]]) -> str:
    lines = ["| row | steps | " + " | ".join(PARTS) + " | max abs gate bias |",
             "|---|---|" + "---|" * (len(PARTS) + 1)]
    for name, (changes, gate_bias, steps) in rows.items():
        cells = [f"{100 * statistics.median(changes[p]):.1f} ({100 * max(changes[p]):.1f})" if p in changes else "–"
                 for p in PARTS]
        bias = f"{gate_bias:.3f}" if gate_bias is not None else "–"
        lines.append(f"| {name} | {steps} | " + " | ".join(cells) + f" | {bias} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="the run's seed_everything")
    parser.add_argument("--gradients", action="store_true", help="add the gradient norms at initialisation")
    parser.add_argument("--batches", type=int, default=4, help="training batches of the gradient norms")
    parser.add_argument("--root", type=Path, default=SHARED_DATA / "cfd", help="CrackForest folder (--gradients)")
    parser.add_argument("--section", default="scnet_drift", help="section of RESULTS.md --write replaces")
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    checkpoints = run_checkpoints(parser, opts)
    rows = {name: drift(checkpoint, opts.seed) for name, checkpoint in checkpoints.items()}
    text = ("## How far training moved each part of SCNet from its initialisation\n\n"
            f"Command: `python -m benchmarks.scnet_drift {shlex.join(argv if argv is not None else sys.argv[1:])}`; "
            f"machine: {machine()}; commit {commit()}; checkpoint `{opts.checkpoint}` of each row. Cells: median "
            "(largest) relative change ‖W − W₀‖ / ‖W₀‖ of the part's weight tensors, in %.\n\n" + table(rows))
    if opts.gradients:
        batches = training_batches(opts.root, opts.batches)
        norms = {name: init_gradients(checkpoint, batches, opts.seed) for name, checkpoint in checkpoints.items()}
        text += (f"\n\nGradient norm of the training loss with respect to each part's weights at initialisation, "
                 f"summed over the first {len(batches)} training batches:\n\n" + gradient_table(norms))
    print(text)
    if opts.write:
        write_section(opts.section, text)
    return text


if __name__ == "__main__":
    main()
