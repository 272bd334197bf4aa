"""Why DFR / SkipAE rank magnetic-tile images as they do: the features, the best a linear AE can do, the scores.

    python -m benchmarks.anomaly_diagnosis --write [--steps 4000] [--root ../shared/data/magnetic_tile]

On the split and inputs of ``configs/dfr/magnetic_tile.yaml`` (EfficientNet-Lite0 levels 0–3, offline weights,
256² → a 64² grid of 192 channels; SkipAE's levels 1–3 are the last 176 of them), with the extractor run once:

1. **PCA residual**: the squared residual of each feature vector after projection on the principal components
   explaining 90 % of the training vectors' variance (DFR's own width rule). A linear autoencoder of that width
   converges to it, so it tells what the reconstruction family can reach with these features, independently of
   training length. Scored with the map maximum (DFR, Tang et al.), the top-1 % mean and the mean, with and
   without the two grid cells along the border; plus where the
   maximum lies (border ring or interior) on defect-free and defective images.
2. **DFR's autoencoder trained on the kept features** (the frozen extractor and unaugmented images make this the
   same optimisation as ``crackseg fit``, as ``cache_features`` does): image AUROC against training step, Adam
   lr 1e-4, batch 4 (the config's).
3. A panel (``benchmarks/anomaly_diagnosis.png``): the six defect-free test images the PCA residual scores
   highest and the six defective ones it scores lowest, with their maps and masks.

Image AUROC with torchmetrics on the test split (20 % of MT_Free + every defective image).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks import common
from crackseg.datamodules import MagneticTileDataModule
from crackseg.lightning_modules import DFR
from crackseg.metrics import ImageMetrics
from crackseg.models.feature_ae import DFRModel, residual_map

PANEL = common.REPO / "benchmarks" / "anomaly_diagnosis.png"
BORDER = 2  # grid cells (8 pixels at 256²)


def features(root: Path, threads: int,
             padding_mode: str = "zeros") -> tuple[dict[str, torch.Tensor], MagneticTileDataModule]:
    """The DFR config's extractor over the training and test images (float16 to halve the memory)."""
    torch.set_num_threads(threads)
    datamodule = MagneticTileDataModule(root, rotate_limit=0, flip=False, batch_size=16, eval_batch_size=16)
    datamodule.setup("fit")
    datamodule.setup("test")
    model = DFR(backbone="efficientnet_lite0", blocks=[0, 1, 2, 3], layers=None, weights="offline",
                normalization="symmetric", latent_dim=1, padding_mode=padding_mode).eval()
    out: dict[str, list[torch.Tensor]] = {"train": [], "test": [], "label": []}
    with torch.no_grad():
        for split, loader in (("train", datamodule.train_dataloader()), ("test", datamodule.test_dataloader())):
            for batch in loader:
                out[split].append(model.extract_features(batch["image"]).half())
                if split == "test":
                    out["label"].append(batch["label"])
    return {k: torch.cat(v) for k, v in out.items()}, datamodule


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image AUROC % with crackseg's own metric (exact, on dense ranks: no sigmoid on unbounded scores)."""
    metric = ImageMetrics()
    metric.update(scores.float(), labels, 0.0)
    return float(metric.compute()["image_auroc"]) * 100


def score_variants(maps: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC of the max / top-1 % mean / mean of (B, h, w) maps, with and without the border ring."""
    inner = maps[:, BORDER:-BORDER, BORDER:-BORDER]
    out = {}
    for where, m in (("", maps), (" (no border)", inner)):
        flat = m.flatten(1)
        k = max(1, math.ceil(0.01 * flat.shape[1]))
        out[f"max{where}"] = auroc(flat.amax(1), labels)
        out[f"top-1 % mean{where}"] = auroc(flat.topk(k, 1).values.mean(1), labels)
        if not where:
            out["mean"] = auroc(flat.mean(1), labels)
    return out


def pca_residual(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(N, h, w) squared residual after the principal components with 90 % of the training variance."""
    channels = train.shape[1]
    generator = torch.Generator().manual_seed(0)
    vectors = train.movedim(1, -1).reshape(-1, channels)
    sample = vectors[torch.randint(0, len(vectors), (200_000,), generator=generator)].double()
    mean = sample.mean(0)
    centred = sample - mean
    values, vecs = torch.linalg.eigh(centred.T @ centred / len(centred))
    values, vecs = values.flip(0), vecs.flip(1)
    width = int(((values.cumsum(0) / values.sum()) <= 0.9).sum()) + 1
    basis = vecs[:, :width].float()
    maps = []
    for i in range(0, len(test), 32):
        x = test[i:i + 32].float().movedim(1, -1) - mean.float()
        maps.append((x - (x @ basis) @ basis.T).pow(2).mean(-1))
    return torch.cat(maps), width


def train_curve(train: torch.Tensor, test: torch.Tensor, labels: torch.Tensor, latent: int, steps: int,
                every: int, batch_size: int = 4) -> list[tuple[int, float, dict[str, float]]]:
    """DFR's AE on the kept features: (step, training loss, image AUROC by score) every ``every`` steps."""
    torch.manual_seed(0)
    net = DFRModel(train.shape[1], latent)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    curve, losses, step = [], [], 0
    while step < steps:
        for index in torch.randperm(len(train), generator=generator).split(batch_size):
            x = train[index].float()
            loss = F.mse_loss(net(x), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % every == 0 or step == steps:
                net.eval()
                with torch.no_grad():
                    maps = torch.cat([residual_map(t, net(t))[:, 0] for t in test.float().split(32)])
                net.train()
                scores = score_variants(maps, labels)
                scores["corner"] = float((maps.flatten(1).argmax(1) == 0).float().mean()) * 100
                curve.append((step, sum(losses[-every:]) / len(losses[-every:]), scores))
                print(curve[-1], flush=True)
            if step >= steps:
                break
    return curve


def panel(datamodule: MagneticTileDataModule, maps: torch.Tensor, labels: torch.Tensor, out: Path) -> Path:
    """Rows: the highest-scoring defect-free and the lowest-scoring defective test images (image, map, mask)."""
    import cv2

    dataset = datamodule.datasets["test"]
    score = maps.flatten(1).amax(1)
    top = float(maps.max())
    good, bad = torch.where(labels == 0)[0], torch.where(labels == 1)[0]
    rows = []
    for chosen in (good[score[good].argsort(descending=True)[:6]], bad[score[bad].argsort()[:6]]):
        tiles = []
        for i in chosen.tolist():
            item = dataset[i]
            image = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)[..., ::-1]
            heat = cv2.resize(maps[i].numpy() / top, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            heat = cv2.applyColorMap((np.clip(2 * heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
            mask = cv2.cvtColor((item["mask"][0].numpy() * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            tiles.append(np.vstack([image, heat, mask]))
        rows.append(np.hstack(tiles))
    grid = np.vstack(rows)
    cv2.imwrite(str(out), cv2.resize(grid, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))  # a small file
    return out


def run(args: argparse.Namespace) -> str:
    start = time.perf_counter()
    lines = [f"Machine: {common.machine()}; commit {common.commit()}; {args.threads} threads. Command: "
             f"`python -m benchmarks.anomaly_diagnosis --steps {args.steps}`.", "",
             "### 1. PCA residual (the optimum of a linear AE of DFR's width), image AUROC %", "",
             "| extractor padding | features | width (90 % var.) | max | top-1 % mean | mean | max (no border) | "
             "top-1 % (no border) | argmax on border: good / defective |",
             "|---|---|---|---|---|---|---|---|---|"]
    curves = {}
    shown = None
    for padding in ("zeros", "reflect"):
        feats, datamodule = features(Path(args.root), args.threads, padding)
        train, test, labels = feats["train"], feats["test"], feats["label"]
        for name, lo in (("DFR (levels 0–3, 192 ch)", 0), ("SkipAE (levels 1–3, 176 ch)", 16)):
            maps, width = pca_residual(train[:, lo:], test[:, lo:])
            if lo == 0 and padding == "zeros":
                shown = panel(datamodule, maps, labels, Path(args.panel))
            if lo == 0:
                dfr_width = width
            v = score_variants(maps, labels)
            idx = maps.flatten(1).argmax(1)
            r, c = idx // maps.shape[2], idx % maps.shape[2]
            ring = (r < BORDER) | (c < BORDER) | (r >= maps.shape[1] - BORDER) | (c >= maps.shape[2] - BORDER)
            good, bad = float(ring[labels == 0].float().mean()), float(ring[labels == 1].float().mean())
            lines.append(f"| {padding} | {name} | {width} | {v['max']:.1f} | {v['top-1 % mean']:.1f} | "
                         f"{v['mean']:.1f} | {v['max (no border)']:.1f} | {v['top-1 % mean (no border)']:.1f} | "
                         f"{good:.0%} / {bad:.0%} |")
        curves[padding] = (math.ceil(len(train) / 4), train_curve(train, test, labels, dfr_width, args.steps,
                                                                   args.every))
        del feats, train, test
    lines += ["", "### 2. DFR's autoencoder on the kept features (Adam 1e-4, batch 4), image AUROC % by step",
              "", "| extractor padding | step | epoch | train loss | max | max (no border) | top-1 % mean | "
              "top-1 % (no border) | mean | maximum in the top-left cell |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for padding, (per_epoch, curve) in curves.items():
        for step, loss, v in curve:
            lines.append(f"| {padding} | {step} | {step / per_epoch:.1f} | {loss:.3f} | {v['max']:.1f} | "
                         f"{v['max (no border)']:.1f} | {v['top-1 % mean']:.1f} | "
                         f"{v['top-1 % mean (no border)']:.1f} | {v['mean']:.1f} | {v['corner']:.0f} % |")
    inside = shown is not None and shown.is_relative_to(common.REPO)
    where = shown.relative_to(common.REPO) if inside else shown
    lines += ["", f"No border: the {BORDER} grid cells ({4 * BORDER} pixels at 256²) along each side left out. Panel: "
              f"`{where}` (top: the 6 highest-scoring defect-free test images; bottom: the 6 lowest-scoring "
              "defective ones; rows image / PCA-residual map (zero padding) / mask). Whole run "
              f"{(time.perf_counter() - start) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(common.SHARED_DATA / "magnetic_tile"))
    parser.add_argument("--steps", type=int, default=4000, help="training steps of the AE curve (batch 4)")
    parser.add_argument("--every", type=int, default=500, help="steps between AUROC points")
    parser.add_argument("--threads", type=int, default=common.usable_cores())
    parser.add_argument("--panel", default=str(PANEL))
    parser.add_argument("--section", default="anomaly_diagnosis")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    text = f"## {args.section} — why the feature autoencoders rank magnetic-tile images as they do\n\n" + run(args)
    if args.write:
        common.write_section(args.section, text)
    print(text)


if __name__ == "__main__":
    main()
