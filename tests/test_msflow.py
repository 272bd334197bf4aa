"""MSFlow flows, maps and losses, the extractor pre-training U-Net, the weight hand-over and the CLI."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from fakes import offline_or_random_weights

from crackseg.cli import main
from crackseg.lightning_modules import ExtractorPretraining, MSFlow
from crackseg.models.msflow import FusionCoupling, MSFlowModel, MultiScaleFlow, PretrainUNet, positional_encoding_2d

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "msflow"

pytestmark = pytest.mark.usefixtures("single_thread")


def _perturbed(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Move the trainable parameters off their initial values (FrEIA's fixed permutations stay)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def _tiny_flow(dtype: torch.dtype = torch.float32) -> MultiScaleFlow:
    torch.manual_seed(0)
    return _perturbed(MultiScaleFlow([4, 5], blocks=(2, 3), cond_channels=8).to(dtype))


def test_flows_are_invertible() -> None:
    flow = _tiny_flow()
    xs = [torch.randn(3, 4, 8, 8), torch.randn(3, 5, 4, 4)]
    zs, _ = flow(xs)
    assert [z.shape for z in zs] == [x.shape for x in xs]
    back = flow.inverse(zs)
    for x, y in zip(xs, back, strict=True):
        assert torch.allclose(x, y, atol=1e-4)
    assert max(float((z - x).detach().abs().max()) for z, x in zip(zs, xs, strict=True)) > 0.1  # not the identity


def test_log_determinant_matches_brute_force_jacobian() -> None:
    flow = _tiny_flow(torch.float64)
    shapes = [(4, 4, 4), (5, 2, 2)]
    sizes = [math.prod(s) for s in shapes]
    xs = [torch.randn(2, *s, dtype=torch.float64) for s in shapes]
    _, logdet = flow(xs)
    logdet = logdet.detach()

    def flat_flow(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        zs, _ = flow([p.view(1, *s) for p, s in zip(parts, shapes, strict=True)])
        return torch.cat([z.flatten() for z in zs])

    for i in range(2):
        flat = torch.cat([x[i].flatten() for x in xs])
        jacobian = torch.autograd.functional.jacobian(flat_flow, flat)
        sign, logabsdet = torch.linalg.slogdet(jacobian)
        assert float(sign) != 0
        assert float(logdet[i]) == pytest.approx(float(logabsdet), abs=1e-8)


def test_fusion_coupling_with_odd_channels_inverts_and_mixes_scales() -> None:
    torch.manual_seed(0)
    fusion = _perturbed(FusionCoupling([3, 7, 5], clamp=1.9))
    xs = [torch.randn(2, 3, 8, 8), torch.randn(2, 7, 4, 4), torch.randn(2, 5, 2, 2)]
    ys, logdet = fusion(xs)
    back, inverse_logdet = fusion(ys, rev=True)
    for x, y in zip(xs, back, strict=True):
        assert torch.allclose(x, y, atol=1e-5)
    assert torch.allclose(logdet, -inverse_logdet, atol=1e-4)
    changed = [x.clone() for x in xs]
    changed[2] = changed[2] + 1.0  # the coarsest scale changes the finest one's output
    assert not torch.allclose(fusion(changed)[0][0], ys[0])


def test_positional_encoding_layout() -> None:
    encoding = positional_encoding_2d(8, 3, 5)
    assert encoding.shape == (8, 3, 5)
    assert torch.allclose(encoding[0, :, 0], torch.zeros(3)) and torch.allclose(encoding[1, :, 0], torch.ones(3))
    assert torch.allclose(encoding[0, 0], torch.sin(torch.arange(5.0)))  # x along the width
    assert torch.allclose(encoding[4, :, 0], torch.sin(torch.arange(3.0)))  # y along the height
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding_2d(6, 2, 2)


def test_msflow_model_shapes_and_frozen_extractor() -> None:
    model = MSFlowModel("resnet18", weights=None, blocks=(1, 1, 2), cond_channels=8)
    assert model.stride == 32
    out = model(torch.rand(2, 3, 64, 96))
    assert [tuple(z.shape) for z in out["z"]] == [(2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    assert out["logdet"].shape == (2,)
    assert not any(p.requires_grad for p in model.extractor.parameters())
    model.train()
    assert not model.extractor.training and model.flows.training
    with pytest.raises(ValueError, match="one count per stage"):
        MSFlowModel("resnet18", weights=None, blocks=(2, 5))


@pytest.mark.parametrize("normalization", ["image", "none"])
def test_maps_scores_and_loss(normalization: str) -> None:
    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8,
                    map_normalization=normalization, normalization="imagenet")
    batch = {"image": torch.rand(2, 3, 70, 90), "mask": torch.zeros(2, 1, 70, 90),
             "has_mask": torch.tensor([True, True]), "label": torch.tensor([0, 1])}
    result = module.evaluate_batch(batch)
    assert result["map"].shape == result["pro_map"].shape == (2, 1, 70, 90)  # padded to 96 and cropped back
    assert float(result["map"].min()) >= 0 and float(result["pro_map"].min()) >= 0
    assert float(result["pro_map"].max()) <= 1
    if normalization == "image":  # each image's most likely pixel scores 0
        assert torch.allclose(result["pro_map"].flatten(1).amin(1), torch.zeros(2), atol=1e-6)
    k = math.ceil(0.03 * 70 * 90)
    expected = result["pro_map"].flatten(1).topk(k, dim=1).values.mean(1)
    assert torch.allclose(result["score"], expected)
    losses = module.compute_loss(result["outputs"], batch)
    zs, logdet = result["outputs"]["z"], result["outputs"]["logdet"]
    nll = sum(0.5 * (z**2).sum(dim=(1, 2, 3)) for z in zs) - logdet
    assert float(losses["loss"]) == pytest.approx(float(nll.mean()), rel=1e-5)


def test_inference_chunks_give_the_whole_batch_latents() -> None:
    model = MSFlowModel("resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, inference_chunk=None).eval()
    images = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        whole = model(images)
        model.inference_chunk = 2  # 2 + 2 + 1 images
        chunked = model(images)
    assert torch.allclose(chunked["logdet"], whole["logdet"], atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(chunked["z"], whole["z"], strict=True))
    assert MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8).net.inference_chunk == 4
    with pytest.raises(ValueError, match="inference_chunk"):
        MSFlow(backbone="resnet18", weights=None, inference_chunk=0)


def test_additive_map_follows_the_reference_formula() -> None:
    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8)
    zs = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2), torch.randn(1, 2, 1, 1)]
    outputs = {"z": zs, "image_size": (32, 32)}

    def up(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=True)

    native = [-0.5 * (z**2).mean(1, keepdim=True) for z in zs]
    probs = sum(up(torch.exp(lp - lp.max())) for lp in native)  # post_process: exp per scale, then upsample
    assert torch.allclose(module.anomaly_map(outputs), probs.max() - probs, atol=1e-6)
    late = sum(torch.exp(up(lp) - lp.max()) for lp in native)
    assert not torch.allclose(module.anomaly_map(outputs), late.max() - late, atol=1e-4)  # not exp after upsampling
    total = sum(up(lp) for lp in native)
    assert torch.allclose(module.pro_map(None, outputs), 1 - torch.exp(total - total.max()), atol=1e-6)


@pytest.mark.parametrize("normalization", ["image", "none"])
def test_mean_nll_image_score_is_the_images_mean_negative_log_likelihood(normalization: str) -> None:
    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, image_score="mean_nll",
                    map_normalization=normalization)
    zs = [torch.randn(2, 2, 4, 4), torch.randn(2, 2, 2, 2), 3 * torch.randn(2, 2, 1, 1)]
    outputs = {"z": zs, "image_size": (32, 32)}
    total = sum(torch.nn.functional.interpolate(-0.5 * (z**2).mean(1, keepdim=True), size=(32, 32), mode="bilinear",
                                                align_corners=True) for z in zs)
    assert torch.allclose(module.image_score(None, outputs), -total.flatten(1).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="image_score"):
        MSFlow(backbone="resnet18", weights=None, image_score="max")


def test_scale_zmax_standardises_each_scale_by_the_training_images_statistics() -> None:
    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, image_score="scale_zmax")
    torch.manual_seed(0)

    def outputs(n: int, spread: float) -> dict:
        return {"z": [torch.randn(n, 2, 4, 4), spread * torch.randn(n, 2, 2, 2), torch.randn(n, 2, 1, 1)],
                "image_size": (32, 32)}

    batches = [outputs(3, 2.0), outputs(4, 2.0)]
    with pytest.raises(ValueError, match="scale_zmax.*calibrate_scale_statistics"):
        module.image_score(None, batches[0])  # no statistics yet: a clear error, not NaN scores
    for batch in batches:
        module.add_scale_statistics(batch)
    assert module.apply_scale_statistics() and module._scale_sums is None
    values = torch.cat([module.scale_mean_nll(b) for b in batches])  # (7 images, 3 scales)
    assert values.shape == (7, 3)
    assert torch.allclose(values[:, 0], torch.cat([0.5 * (b["z"][0] ** 2).flatten(1).mean(1) for b in batches]))
    mean, std = module.scale_nll_stats.clone()
    assert torch.allclose(mean, values.mean(0), atol=1e-6) and torch.allclose(std, values.std(0), atol=1e-6)
    test = outputs(5, 2.0)
    expected = ((module.scale_mean_nll(test) - mean) / std).amax(1)
    assert torch.allclose(module.image_score(None, test), expected, atol=1e-6)
    assert not module.apply_scale_statistics()  # no new training batches: the statistics stay
    assert torch.equal(module.scale_nll_stats[0], mean)
    module.calibrate_scale_statistics([{"image": torch.rand(2, 3, 64, 64)}, {"image": torch.rand(1, 3, 64, 64)}])
    assert torch.isfinite(module.scale_nll_stats).all() and not torch.equal(module.scale_nll_stats[0], mean)
    with pytest.raises(ValueError, match="fewer than 2"):
        module.calibrate_scale_statistics([{"image": torch.rand(1, 3, 64, 64)}])
    with pytest.raises(ValueError, match="scale_zmax"):
        MSFlow(backbone="resnet18", weights=None, image_score="zmax")


def test_loss_decreases_and_gradients_are_clipped() -> None:
    torch.manual_seed(0)
    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, lr=1e-3,
                    lr_schedule="constant")
    images = torch.rand(4, 3, 64, 64)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(15):
        loss = module.compute_loss(module(images), {})["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 2.0)
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="top_k"):
        MSFlow(backbone="resnet18", weights=None, top_k=0)
    with pytest.raises(ValueError, match="cond_channels"):
        MSFlow(backbone="resnet18", weights=None, cond_channels=6)


def test_pretrain_unet_shapes_and_trainable_encoder() -> None:
    for backbone, size in (("resnet18", (64, 96)), ("efficientnet_lite0", (64, 64))):
        net = PretrainUNet(backbone, weights=None)
        assert net(torch.rand(2, 3, *size))["logits"].shape == (2, 1, *size)
        assert all(p.requires_grad for p in net.encoder.parameters())
    with pytest.raises(ValueError, match="halve"):
        PretrainUNet("resnet18", stages=(1, 3), weights=None)


def test_reflect_padding_changes_the_border_reads_not_the_weights(tmp_path: Path) -> None:
    from torch import nn

    from crackseg.models.backbones import create_backbone

    torch.manual_seed(0)
    zeros = MSFlowModel("resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8).eval()
    torch.manual_seed(0)
    reflect = MSFlowModel("resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, padding_mode="reflect").eval()
    padded = [m for m in reflect.extractor.modules() if isinstance(m, nn.Conv2d) and any(m.padding)]
    assert padded and all(m.padding_mode == "reflect" for m in padded)  # the 7×7 stem and every 3×3
    assert all(m.padding_mode == "zeros" for m in reflect.extractor.modules()
               if isinstance(m, nn.Conv2d) and not any(m.padding))  # 1×1 convolutions need no fill
    state = zeros.extractor.state_dict()
    assert list(state) == list(reflect.extractor.state_dict())
    assert all(torch.equal(state[k], v) for k, v in reflect.extractor.state_dict().items())  # same weights
    x = torch.rand(1, 3, 64, 64)
    a, b = zeros.features(x), reflect.features(x)
    assert [t.shape for t in a] == [t.shape for t in b]
    assert not torch.allclose(a[0], b[0])  # the border reads changed the maps
    with pytest.raises(ValueError, match="padding_mode"):
        create_backbone("resnet18", (1,), None, padding_mode="mirror")
    flow = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, normalization="imagenet",
                  padding_mode="reflect")
    assert all(m.padding_mode == "reflect" for m in flow.net.extractor.modules()
               if isinstance(m, nn.Conv2d) and any(m.padding))
    pre = ExtractorPretraining(backbone="resnet18", weights=None, normalization="imagenet", padding_mode="reflect")
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": pre.state_dict(), "hyper_parameters": dict(pre.hparams)}, path)
    with pytest.raises(ValueError, match="padding_mode"):  # pre-trained with reflect, used with zeros
        MSFlow(backbone="resnet18", weights=None, extractor_checkpoint=str(path), normalization="imagenet")


def test_pretraining_hands_every_extractor_tensor_to_msflow(tmp_path: Path) -> None:
    pre = ExtractorPretraining(backbone="resnet18", weights=None, normalization="imagenet")
    _perturbed(pre.net.encoder, 0.5)  # unlike any fresh initialisation
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": pre.state_dict(), "hyper_parameters": dict(pre.hparams)}, path)
    flow = MSFlow(backbone="resnet18", weights=None, extractor_checkpoint=str(path), blocks=(1, 1, 1),
                  cond_channels=8, normalization="imagenet")
    ours, theirs = flow.net.extractor.state_dict(), pre.net.encoder.state_dict()
    assert list(ours) == list(theirs) and len(ours) > 50
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    with pytest.raises(ValueError, match="stages"):
        MSFlow(backbone="resnet18", stages=(1, 2), blocks=(1, 1), weights=None, extractor_checkpoint=str(path),
               normalization="imagenet")
    with pytest.raises(ValueError, match="normalization"):
        MSFlow(backbone="resnet18", weights=None, extractor_checkpoint=str(path), normalization="symmetric")
    with pytest.raises(ValueError, match="not found"):
        MSFlow(backbone="resnet18", weights=None, extractor_checkpoint=str(tmp_path / "missing.ckpt"))


# -- the CLI: the three Table I variants -------------------------------------------------------------------------
TINY_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                "--trainer.max_epochs", "1"]
TINY_FLOW = ["--model.init_args.blocks", "[1, 1, 1]", "--model.init_args.cond_channels", "8"]


def _shrunk(config: Path, workdir: Path, weights: str | None = None, data: dict | None = None,
            source: dict | None = None) -> Path:
    """A copy of ``config`` (a dataset config or a fragment) with tiny data and the given extractor weights, in
    ``workdir/configs/msflow`` so that its runs are named as the original's (under ``workdir/runs``)."""
    cfg = yaml.safe_load(config.read_text())
    if weights is not None:
        cfg["model"]["init_args"]["weights"] = weights
    if data is not None:
        cfg["data"]["init_args"].update(data)
    synthetic = cfg.get("data", {}).get("init_args", {}).get("synthetic_anomalies")
    if synthetic and synthetic["class_path"] == "PoissonBlend" and source is not None:
        synthetic["init_args"]["source"]["init_args"].update(source)
    path = workdir / "configs" / "msflow" / config.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


SYNTHETIC_TINY = {"n_train": 4, "n_val": 2, "n_test": 4, "generate_size": [64, 64], "batch_size": 2,
                  "eval_batch_size": 2}
#: the Poisson source fragment each dataset is pre-trained with
POISSON_SOURCE = {"synthetic": "synthetic", "magnetic_tile": "deepcrack"}


def _table_one(workdir: Path, dataset: str, data: dict, source: dict | None, extra: list[str]) -> dict[str, dict]:
    """Fit + test MSFlow without a task, and pre-train (CutPaste, Poisson) then fit + test MSFlow on it: the
    dataset config composed with ``pretrain_<task>`` and then with ``<task>.yaml`` fragments."""
    weights = offline_or_random_weights()
    base = _shrunk(CONFIGS / f"{dataset}.yaml", workdir, weights, data)
    results = {}
    for task in ("none", "cutpaste", "poisson"):
        handover = []
        if task != "none":
            name = "pretrain_cutpaste" if task == "cutpaste" else f"pretrain_poisson_from_{POISSON_SOURCE[dataset]}"
            pre = _shrunk(CONFIGS / f"{name}.yaml", workdir, source=source)
            cli = main(["fit", "--config", str(base), "--config", str(pre), *TINY_TRAINER, *extra])
            train = cli.datamodule.datasets["train"]
            assert cli.datamodule.synthetic_anomalies is not None and len(train) > 0
            assert type(cli.model).__name__ == "ExtractorPretraining"
            checkpoint = workdir / f"runs/msflow_{dataset}_{name}/checkpoints/last.ckpt"
            assert checkpoint.is_file()
            pretrained = cli.model.net.encoder.state_dict()
            handover = ["--config", str(CONFIGS / f"{task}.yaml"),
                        "--model.init_args.extractor_checkpoint", str(checkpoint)]
        common = ["--config", str(base), *handover, *TINY_TRAINER, *TINY_FLOW, *extra]
        cli = main(["fit", *common])
        if task != "none":  # the hand-over: every extractor tensor, by name and value
            assert cli.model.hparams.lr == 1e-6
            ours = cli.model.net.extractor.state_dict()
            assert list(ours) == list(pretrained)
            assert all(torch.equal(ours[k], pretrained[k].to(ours[k].device)) for k in ours)
        run = "msflow_" + dataset + ("" if task == "none" else f"_{task}")
        if task != "none":  # MSFlow's checkpoint holds the extractor: test must not need the pre-training file
            checkpoint.rename(checkpoint.with_name("moved.ckpt"))
        cli = main(["test", *common, "--ckpt_path", str(workdir / f"runs/{run}/checkpoints/best.ckpt")])
        results[task] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        for key in ("auroc", "aupro", "image_auroc"):
            value = results[task][f"test/{key}"]
            assert 0.0 <= value <= 1.0 and not math.isnan(value), (task, key)
    return results


def test_table_one_variants_on_synthetic(workdir: Path) -> None:
    data = {"root": str(workdir / "data"), **SYNTHETIC_TINY}
    source = {"root": str(workdir / "data"), "n_train": 2, "n_val": 1, "n_test": 3, "generate_size": [64, 64]}
    _table_one(workdir, "synthetic", data, source, [])


def test_table_one_variants_on_real_magnetic_tile(workdir: Path, shared_data: Callable[..., Path]) -> None:
    magnetic_tile, deepcrack = shared_data("magnetic_tile"), shared_data("deepcrack", "DeepCrack")
    data = {"root": str(magnetic_tile), "image_size": [64, 64], "test_fraction": 0.005, "check_files": "header",
            "batch_size": 4, "eval_batch_size": 8}
    limits = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches",
              "2"]
    _table_one(workdir, "magnetic_tile", data, {"root": str(deepcrack)}, limits)


def _tiny_magnetic_tile(workdir: Path, *extra: str) -> list[str]:
    """CLI options of MSFlow's magnetic-tile config on a fake layout of 8 defect-free images, tiny flows, 64²."""
    from fakes import make_magnetic_tile

    root = make_magnetic_tile(workdir / "mt", n_free=8)
    return ["--config", str(CONFIGS / "magnetic_tile.yaml"), "--data.init_args.root", str(root),
            "--data.init_args.image_size", "[64, 64]", "--data.init_args.batch_size", "2", *extra,
            "--model.init_args.weights", "null", "--model.init_args.backbone", "resnet18",
            "--model.init_args.normalization", "imagenet", *TINY_FLOW, *TINY_TRAINER]


def test_anomaly_scores_benchmark_rescores_an_msflow_run(workdir: Path) -> None:
    """benchmarks/anomaly_scores gives each map_normalization / image_score of an MSFlow run and the per-scale
    diagnostic; its first cell (the run's own setting) is the image AUROC ``crackseg test`` reports."""
    from benchmarks import anomaly_scores

    # at least 2 validation images for the statistics' row
    common = _tiny_magnetic_tile(workdir, "--data.init_args.val_fraction", "0.4")
    main(["fit", *common])
    run = workdir / "runs/msflow_magnetic_tile"
    cli = main(["test", *common, "--ckpt_path", str(run / "checkpoints/best.ckpt")])
    text = anomaly_scores.main(["--run", f"MSFlow={run}", "--smoothing", "0,2"])
    lines = text.splitlines()
    smoothing = [[c.strip() for c in line.strip("|").split("|")] for line in lines
                 if line.startswith(("| additive map |", "| multiplicative map |", "| −Σ logp |"))]
    assert [r[:2] for r in smoothing][::2] == [["additive map", "0"], ["multiplicative map", "0"], ["−Σ logp", "0"]]
    assert all(len(r) == 4 and 0 <= float(r[2]) <= 100 and 0 <= float(r[3]) <= 100 for r in smoothing)
    # the unsmoothed multiplicative map is the one crackseg test computes AUPRO on
    assert float(smoothing[2][3]) == pytest.approx(100 * float(cli.trainer.callback_metrics["test/aupro"]), abs=0.05)
    heads = lines.index("| image, topk | none, topk | image, mean_nll | image, scale_zmax |")
    cells = [cell.strip() for cell in lines[heads + 2].strip("|").split("|")]
    assert len(cells) == 4 and all(0 <= float(c.split(" / ")[0]) <= 100 for c in cells)
    assert float(cells[0].split(" / ")[0]) == pytest.approx(
        100 * float(cli.trainer.callback_metrics["test/image_auroc"]), abs=0.05)
    scales = next(line for line in lines if line.startswith("| scale 1 mean |"))
    assert scales.count("|") == 7  # mean and top 1 % of three scales
    sources = [line for line in lines if line.startswith(("| training images", "| validation images"))]
    assert len(sources) == 2 and all(line.count("|") == 8 for line in sources)
    # every test image's maximum lies at one of the three scales
    counts = [[int(n) for cell in line.split("|")[4:7] for n in cell.split(" / ")] for line in sources]
    assert all(sum(c) == len(cli.datamodule.datasets["test"]) for c in counts)


def test_scale_zmax_statistics_are_gathered_in_fit_and_kept_in_the_checkpoint(workdir: Path) -> None:
    """Fit with image_score scale_zmax: the training batches give the per-scale statistics before validation,
    the checkpoint keeps them, and test from it scores with them; a checkpoint without them refuses clearly."""
    common = _tiny_magnetic_tile(workdir)
    fitted = main(["fit", *common, "--model.init_args.image_score", "scale_zmax"]).model
    stats = fitted.scale_nll_stats.detach().cpu()
    assert stats.shape == (2, 3) and torch.isfinite(stats).all() and bool((stats[1] > 0).all())
    best = workdir / "runs/msflow_magnetic_tile/checkpoints/best.ckpt"
    assert torch.equal(torch.load(best, map_location="cpu", weights_only=False)["state_dict"]["scale_nll_stats"], stats)
    cli = main(["test", *common, "--model.init_args.image_score", "scale_zmax", "--ckpt_path", str(best)])
    assert torch.equal(cli.model.scale_nll_stats.cpu(), stats)
    assert 0.0 <= float(cli.trainer.callback_metrics["test/image_auroc"]) <= 1.0
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)  # as saved before the statistics existed
    del checkpoint["state_dict"]["scale_nll_stats"]
    old = workdir / "old.ckpt"
    torch.save(checkpoint, old)
    assert not MSFlow.load_from_checkpoint(old, map_location="cpu").has_scale_statistics()
    with pytest.raises(ValueError, match="scale_zmax"):
        main(["test", *common, "--model.init_args.image_score", "scale_zmax", "--ckpt_path", str(old)])
