"""anomalib's FastFlow, PaDiM or PatchCore on arrays the benchmark runner wrote: train, test maps, timing.

Run by ``benchmarks/run.py`` with the Python of a separate environment holding anomalib (anomalib is never a
dependency of crackseg); this script imports neither crackseg nor anything the runner imports except
``benchmarks.timing``, so it measures the peer models with the same training-throughput callback and the
same peak-memory probe as our rows::

    /work/venvs/anomalib/bin/python -m benchmarks.anomalib_peer --model fastflow --data DIR --weights W.pth \\
        --out result.json [--minutes M] [--epochs E]

``DIR`` holds ``train.npy`` and ``test.npy`` (uint8, N×3×H×W, already at the input size, the runner's split).
Every model gets the same extractor as our MSFlow / SkipAE configs: the timm ``--backbone`` (stages
``--stages``; PatchCore the last two of them, its paper's mid-level pair, ``--patchcore-stages`` to choose),
built with ``pretrained=False`` and then loaded with the state dict ``--weights`` (the runner saves the weights
its own factory loads), and the same input normalisation (``--mean`` / ``--std``). EfficientAD is not offered:
anomalib fetches its distilled teacher and ImageNette from the internet, which neither this machine nor many
clusters reach.
``--fitted CKPT`` skips training and testing: the model is rebuilt, its fitted state (FastFlow's weights, PaDiM's
Gaussians, PatchCore's memory bank) loaded from the Lightning checkpoint an earlier run saved, and only the
inference times and peak memory are measured (for re-timing on a quiet machine, ``benchmarks/anomaly_timing.py``).
Written: ``--out`` (JSON: throughput, fit time, inference ms at batch 1 / 32, peak memory) and
``DIR/<model>_maps.npy`` / ``DIR/<model>_scores.npy`` (anomaly maps N×H×W and image scores of the test
images, in order), from which the runner computes the metrics with crackseg's own metric code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.engine import Engine
from anomalib.models import Fastflow, Padim, Patchcore
from anomalib.models.image.fastflow.torch_model import create_fast_flow_block
from anomalib.pre_processing import PreProcessor
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from benchmarks.timing import TrainThroughput, median_ms_per_image, peak_memory_mb, read_throughput, reset_peak_memory


class ArrayImages(Dataset):
    """anomalib ``ImageItem``s (normal, label 0) from a uint8 N×3×H×W array."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ImageItem:
        image = torch.from_numpy(np.array(self.images[index])).float() / 255.0
        return ImageItem(image=image, gt_label=torch.tensor(0), image_path=str(index))


def load_extractor_weights(extractor: nn.Module, path: Path) -> None:
    """Load the runner's state dict into a timm features-only model; every tensor of the model must be there."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in extractor.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"weights {path} lack {len(missing)} tensors of the extractor (e.g. {missing[:3]})")
    extractor.load_state_dict({k: v for k, v in state.items() if k in extractor.state_dict()}, strict=False)


def fastflow_on(model: Fastflow, backbone: str, stages: list[int], input_size: tuple[int, int],
                weights: Path) -> None:
    """Give anomalib's FastFlow a CNN extractor it does not list (it accepts resnet18 / wide_resnet50_2 only).

    Written here because FastflowModel hard-codes its backbone names; this repeats its CNN branch (timm
    ``features_only`` stages, trainable LayerNorm per stage, one FastFlow block per stage) for ``backbone``.
    """
    torch_model = model.model
    extractor = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=stages)
    load_extractor_weights(extractor, weights)
    for parameter in extractor.parameters():
        parameter.requires_grad = False
    channels, scales = extractor.feature_info.channels(), extractor.feature_info.reduction()
    dims = [[c, input_size[0] // s, input_size[1] // s] for c, s in zip(channels, scales, strict=True)]
    torch_model.feature_extractor = extractor
    torch_model.norms = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=True) for d in dims)
    torch_model.fast_flow_blocks = nn.ModuleList(
        create_fast_flow_block(input_dimensions=d, conv3x3_only=model.conv3x3_only, hidden_ratio=model.hidden_ratio,
                               flow_steps=model.flow_steps) for d in dims)


def build(args: argparse.Namespace, input_size: tuple[int, int]) -> Fastflow | Padim | Patchcore:
    pre_processor = PreProcessor(transform=v2.Compose([v2.Resize(input_size, antialias=True),
                                                       v2.Normalize(mean=args.mean, std=args.std)]))
    common = {"pre_processor": pre_processor, "post_processor": False, "evaluator": False, "visualizer": False}
    if args.model == "fastflow":
        model = Fastflow(backbone="resnet18", pre_trained=False, **common)
        fastflow_on(model, args.backbone, args.stages, input_size, Path(args.weights))
        return model
    probe = timm.create_model(args.backbone, pretrained=False, features_only=True)
    layers = [probe.feature_info.info[i]["module"] for i in peer_stages(args)]
    if args.model == "patchcore":
        model = Patchcore(backbone=args.backbone, layers=layers, pre_trained=False,
                          coreset_sampling_ratio=args.coreset_ratio, num_neighbors=args.num_neighbors, **common)
    else:
        model = Padim(backbone=args.backbone, layers=layers, pre_trained=False, n_features=args.n_features, **common)
    load_extractor_weights(model.model.feature_extractor.feature_extractor, Path(args.weights))
    return model


def peer_stages(args: argparse.Namespace) -> list[int]:
    """The extractor's feature levels the model reads (PatchCore: by default the last two of ``--stages``)."""
    return list(args.patchcore_stages or args.stages[-2:]) if args.model == "patchcore" else list(args.stages)


def inference_ms(model: Fastflow | Padim | Patchcore, batch_size: int, input_size: tuple[int, int], runs: int,
                 warmup: int, device: str) -> float:
    """Median ms per image of pre-processing (normalisation) + network + anomaly map + image score, no grad."""
    images = torch.rand(batch_size, 3, *input_size, device=device)
    # float(...) waits for the device
    return median_ms_per_image(lambda: float(model.model(model.pre_processor(images)).pred_score.sum()),
                               batch_size, runs, warmup, device)


def load_fitted(model: Fastflow | Padim | Patchcore, checkpoint: Path) -> None:
    """Load the state an earlier fit saved; buffers sized by the fit (Gaussians, memory bank) take the saved shape."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in state.items():
        path, _, name = key.rpartition(".")
        module = model.get_submodule(path)
        if name in module._buffers and module._buffers[name] is not None:
            module._buffers[name] = torch.empty_like(value)
    model.load_state_dict(state)


def timing(args: argparse.Namespace, model: Fastflow | Padim | Patchcore, input_size: tuple[int, int],
           device: str) -> dict:
    """``ms_per_image`` per batch size of ``--timing-batches`` and the ``peak_memory_mb`` of the process."""
    ms = {bs: inference_ms(model, bs, input_size, args.timing_runs, args.timing_warmup, device)
          for bs in args.timing_batches}
    return {"ms_per_image": {str(bs): v for bs, v in ms.items()}, "peak_memory_mb": peak_memory_mb(device)}


def score_check(args: argparse.Namespace, model: Fastflow | Padim | Patchcore, device: str) -> float | None:
    """Largest relative gap between the loaded model's scores of the first test batch and those the fit saved.

    Near 0 shows the checkpoint restored the fitted model that was scored; None when no saved scores are there.
    """
    saved = Path(args.data) / f"{args.model}_scores.npy"
    if not saved.is_file():
        return None
    test = np.load(Path(args.data) / "test.npy", mmap_mode="r")[:args.eval_batch_size]
    with torch.no_grad():
        images = torch.from_numpy(np.array(test)).float().to(device) / 255
        scores = model.model(model.pre_processor(images)).pred_score.float().reshape(-1).cpu().numpy()
    reference = np.load(saved)[:len(scores)]
    return float(np.max(np.abs(scores - reference)) / max(float(np.max(np.abs(reference))), 1e-12))


def run_fitted(args: argparse.Namespace, model: Fastflow | Padim | Patchcore, input_size: tuple[int, int],
               device: str) -> dict:
    """Timing only, of the model ``--fitted`` holds (no training, no test maps)."""
    load_fitted(model, Path(args.fitted))
    model.eval().to(device)
    reset_peak_memory(device)
    import anomalib

    result = {"model": args.model, "anomalib": anomalib.__version__, "torch": torch.__version__,
              "fitted": str(args.fitted), "score_check": score_check(args, model, device),
              **timing(args, model, input_size, device),
              "extractor": f"{args.backbone} stages {peer_stages(args)} (weights {Path(args.weights).name})"}
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    train = np.load(data / "train.npy", mmap_mode="r")
    test = np.load(data / "test.npy", mmap_mode="r")
    input_size = (int(train.shape[2]), int(train.shape[3]))
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    torch.manual_seed(args.seed)
    model = build(args, input_size)
    if args.fitted:
        return run_fitted(args, model, input_size, device)
    workdir = Path(args.workdir)
    batches = len(train) // args.batch_size if args.model == "fastflow" else -(-len(train) // args.batch_size)
    meter = TrainThroughput(str(workdir / f"{args.model}_throughput.json"), warmup=min(1, batches - 1))
    one_pass = args.model in ("padim", "patchcore")  # statistics / memory bank of one pass over the images
    limits: dict = {"max_epochs": 1 if one_pass else args.epochs}
    if args.minutes is not None and not one_pass:
        limits["max_time"] = {"seconds": int(round(args.minutes * 60))}
    engine = Engine(callbacks=[meter], logger=False, default_root_dir=workdir, accelerator=args.accelerator,
                    devices=1, enable_progress_bar=False, enable_model_summary=False, **limits)
    loader = DataLoader(ArrayImages(train), batch_size=args.batch_size, shuffle=True, collate_fn=ImageBatch.collate,
                        drop_last=args.model == "fastflow")
    reset_peak_memory(device)
    start = time.perf_counter()
    engine.fit(model, train_dataloaders=loader)
    fit_seconds = time.perf_counter() - start
    trainer = engine.trainer
    model.eval().to(device)
    maps, scores = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(test), args.eval_batch_size):
            images = torch.from_numpy(np.array(test[i:i + args.eval_batch_size])).float().to(device) / 255
            out = model.model(model.pre_processor(images))
            maps.append(out.anomaly_map.float().reshape(len(images), *input_size).cpu().numpy())
            scores.append(out.pred_score.float().reshape(len(images)).cpu().numpy())
    test_seconds = time.perf_counter() - start
    peak = peak_memory_mb(device)
    np.save(data / f"{args.model}_maps.npy", np.concatenate(maps))
    np.save(data / f"{args.model}_scores.npy", np.concatenate(scores))
    ms = timing(args, model, input_size, device)["ms_per_image"]
    import anomalib

    result = {"model": args.model, "anomalib": anomalib.__version__, "torch": torch.__version__,
              "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step), "n_train": len(train),
              "n_test": len(test), "fit_seconds": fit_seconds, "test_seconds": test_seconds,
              "train_images_per_second": read_throughput(meter.output),
              "ms_per_image": ms, "peak_memory_mb": peak,
              "extractor": f"{args.backbone} stages {peer_stages(args)} (weights {Path(args.weights).name})"}
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("fastflow", "padim", "patchcore"), required=True)
    parser.add_argument("--data", required=True, help="folder with train.npy / test.npy (uint8 N×3×H×W)")
    parser.add_argument("--weights", required=True, help="state dict of the timm backbone (the runner's weights)")
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--workdir", required=True, help="folder for anomalib's outputs")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], help="timm feature levels")
    parser.add_argument("--mean", type=float, nargs=3, default=[0.5, 0.5, 0.5])
    parser.add_argument("--std", type=float, nargs=3, default=[0.5, 0.5, 0.5])
    parser.add_argument("--n-features", dest="n_features", type=int, default=100, help="PaDiM's random projection")
    parser.add_argument("--patchcore-stages", dest="patchcore_stages", type=int, nargs="+", default=None,
                        help="PatchCore's feature levels (default: the last two of --stages)")
    parser.add_argument("--coreset-ratio", dest="coreset_ratio", type=float, default=0.01,
                        help="PatchCore's coreset share of the patch embeddings (its paper: 0.01 to 0.25; anomalib's "
                             "default 0.1 costs 10x the greedy selection time)")
    parser.add_argument("--num-neighbors", dest="num_neighbors", type=int, default=9, help="PatchCore's k")
    parser.add_argument("--epochs", type=int, default=500, help="FastFlow epochs (PaDiM: always one pass)")
    parser.add_argument("--minutes", type=float, default=None, help="FastFlow training time limit")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    parser.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=8)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-runs", dest="timing_runs", type=int, default=5)
    parser.add_argument("--timing-warmup", dest="timing_warmup", type=int, default=2)
    parser.add_argument("--timing-batches", dest="timing_batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--fitted", default=None,
                        help="Lightning checkpoint of an earlier fit: time that model only (no training, no test)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
