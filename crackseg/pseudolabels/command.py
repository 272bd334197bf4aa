"""``crackseg pseudo-label``: write a pseudo-labelled DeepCrack-layout dataset from a crack classifier.

::

    crackseg pseudo-label --ckpt_path classifier.ckpt --data DeepCrackDataModule \\
        --data.init_args.root /data/DeepCrack --out runs/pseudo_deepcrack [--split train] \\
        [--generator fast|reference] [--device auto] [--include_test false] [--batch_size 256] [--precision 32] \\
        [--params.bilateral_radius 2] [--overwrite true]
    crackseg pseudo-label --config configs/.../fit.yaml --ckpt_path ... --out ...   # its data: section

Options are parsed by jsonargparse like ``crackseg fit``'s, so ``data`` takes the same short ``class_path``
names and a fit config can be given whole (its ``model`` / ``trainer`` sections are ignored). The generator's
parameters are ``--params.*`` (:class:`~crackseg.pseudolabels.config.PseudoLabelConfig`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser

import crackseg.datamodules  # noqa: F401  (imports every datamodule for short class paths)
from crackseg.datamodules.base import CrackDataModule
from crackseg.pseudolabels.config import PseudoLabelConfig
from crackseg.pseudolabels.dataset import CLASSIFIER_CLASS, load_classifier, pseudo_label_dataset

__all__ = ["build_parser", "main"]

#: sections of a fit config that this command accepts and ignores
IGNORED_SECTIONS = ("model", "trainer", "seed_everything", "optimizer", "lr_scheduler")


def build_parser() -> ArgumentParser:
    """The argument parser of ``crackseg pseudo-label``."""
    parser = ArgumentParser(prog="crackseg pseudo-label", description=(
        "Weakly supervised pseudo labels (König et al.): localise cracks with a trained CrackClassifier "
        "(patch classification + GradCAM++), threshold dark pixels per patch (multi-Otsu), merge, and write "
        "train_img/ train_lab/ (pseudo labels) test_img/ test_lab/ (real masks) and quality.json under --out."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options "
                        "(e.g. a fit config: its data section is used)")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint of the trained CrackClassifier")
    parser.add_subclass_arguments(CrackDataModule, "data", required=True,
                                  help="the source dataset, as in crackseg fit (class_path + init_args)")
    parser.add_argument("--out", type=str, required=True, help="output folder (new or empty unless --overwrite)")
    parser.add_argument("--split", type=Literal["train", "val", "test"], default="train",
                        help="split to pseudo-label; train = every non-test image of the datamodule")
    parser.add_argument("--generator", type=Literal["fast", "reference"], default="fast",
                        help="fast: batched and vectorised; reference: per-patch loops with scikit-image")
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    parser.add_argument("--include_test", type=bool, default=False,
                        help="also pseudo-label the test images and add them to train (semi-supervised)")
    parser.add_argument("--batch_size", type=int, default=256, help="patches per classifier forward pass")
    parser.add_argument("--precision", type=Literal["32", "bf16", "16"], default="32",
                        help="patch classification in float32 (the paper) or bf16 / 16 autocast (GPU tensor cores)")
    parser.add_argument("--tile_size", type=int | None, default=1024,
                        help="photos with a side above tile_size + 2 tile_margin px go by tiles: bounded memory, "
                             "the same labels (null: whole images)")
    parser.add_argument("--tile_margin", type=int, default=512,
                        help="context around each tile (>= the classifier's receptive-field radius: same labels)")
    parser.add_argument("--images_per_batch", type=int, default=8, help="images the generator processes together")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="replace train_img/ train_lab/ test_img/ test_lab/ quality.json of a non-empty --out")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    parser.add_argument("--classifier_class", type=str, default=CLASSIFIER_CLASS,
                        help="LightningModule class the checkpoint is loaded with (import path)")
    parser.add_class_arguments(PseudoLabelConfig, "params", help="parameters of the method (paper defaults)")
    for section in IGNORED_SECTIONS:
        parser.add_argument(f"--{section}", type=Any, default=None, help="ignored (lets a fit config be given)")
    return parser


def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``crackseg pseudo-label`` with ``args`` (the options after the subcommand); returns the report."""
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    init = parser.instantiate_classes(cfg)
    classifier = load_classifier(cfg.ckpt_path, cfg.classifier_class)
    report = pseudo_label_dataset(
        classifier, init.data, cfg.out, split=cfg.split, generator=cfg.generator, include_test=cfg.include_test,
        config=init.params, device=cfg.device, batch_size=cfg.batch_size, precision=cfg.precision,
        images_per_batch=cfg.images_per_batch, overwrite=cfg.overwrite, progress=cfg.progress,
        classifier_name=str(cfg.ckpt_path), tile_size=cfg.tile_size, tile_margin=cfg.tile_margin)
    summary = {key: report[key] for key in ("images", "labelled", "below_min_crack_pixels", "images_per_second")}
    print(json.dumps({**summary, "quality": report["quality"]}, indent=2))
    print(f"pseudo-labelled dataset written to {cfg.out} (DeepCrack layout; details in quality.json)")
    return report
