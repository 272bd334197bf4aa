"""The benchmark runner's smoke suite: every method gets a row of measured figures; --write touches only its section."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from benchmarks import run as bench
from benchmarks.common import RESULTS, write_section

pytestmark = pytest.mark.usefixtures("single_thread")


def test_smoke_suite_rows_and_section(workdir: Path) -> None:
    results = workdir / "RESULTS.md"
    if RESULTS.is_file():
        shutil.copy(RESULTS, results)
    else:
        results.write_text("# Benchmark results\n")
    write_section("other_section", "## Someone else's table\n\n| a |\n|---|\n| 1 |", results=results)
    write_section("run_smoke", "stale text of an earlier run", results=results)
    before = results.read_text()

    text, rows, peers = bench.main(["--suite", "smoke", "--workdir", str(workdir / "runs"), "--results", str(results),
                                    "--write", "--no-peers"])

    assert peers == []
    assert [r.method.split(" ")[0] for r in rows] == list(bench.METHODS)
    import torch

    hcnn = torch.load(workdir / "runs/smoke/HCNN_synthetic/checkpoints/best.ckpt", weights_only=True)
    assert (hcnn["hyper_parameters"]["attention"], hcnn["hyper_parameters"]["edges"]) == ("none", False)  # fragment
    hcnn_adam = torch.load(workdir / "runs/smoke/HCNN+Adam_synthetic/checkpoints/best.ckpt", weights_only=True)
    assert (hcnn_adam["hyper_parameters"]["attention"], hcnn_adam["hyper_parameters"]["optimizer"]) == ("none", "adam")
    for row in rows:
        expected = set(bench.METRICS["Weakly" if row.method.startswith("Weakly") else row.method])
        assert set(row.metrics) == expected, row.method
        for name, value in row.metrics.items():
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (row.method, name, value)
        for value in (row.train_images_per_second, row.ms_b1, row.ms_b32, row.peak_memory_mb):
            assert math.isfinite(value) and value > 0, row
    # the markdown table: one line per method, every figure column numeric
    lines = [line for line in text.splitlines() if line.startswith("| ") and "synthetic" in line]
    assert len(lines) == len(bench.METHODS)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert re.search(r"\d+\.\d", cells[2]), line  # metrics
        for cell in cells[5:9]:  # img/s, ms b1, ms b32, MiB
            float(cell)
    assert "anomalib" in text  # the peer table says why it is empty

    after = results.read_text()
    section = re.compile(r"<!-- begin run_smoke -->.*?<!-- end run_smoke -->", re.S)
    assert section.sub("", after) == section.sub("", before)  # everything else untouched
    assert "stale text" not in after and text.strip() in after
    assert after.count("<!-- begin run_smoke -->") == 1


def test_unknown_method_is_refused(workdir: Path) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--suite", "smoke", "--methods", "NoSuchMethod", "--workdir", str(workdir)])


@pytest.mark.parametrize("suite", ["cpu-small", "gpu-full"])
def test_rows_of_one_dataset_share_one_split(workdir: Path, suite: str) -> None:
    """Every row of a dataset is tested on the same images (SCNet and DeepCrack-Liu once used 0.2 vs 0.4 of CFD)."""
    import inspect

    import yaml

    import crackseg.datamodules

    def defaults(cls: type) -> dict:
        found: dict = {}
        for klass in reversed(cls.__mro__):  # subclass defaults win (CrackForest's test_fraction)
            if "__init__" in vars(klass):
                found.update({name: p.default for name, p in inspect.signature(klass.__init__).parameters.items()
                              if p.default is not inspect.Parameter.empty})
        return found

    splits: dict[str, set] = {}
    for job in bench.suite_jobs(suite, workdir, None, "cpu"):
        config = yaml.safe_load((bench.REPO / job.config).read_text())
        init = config["data"].get("init_args") or {}
        if job.method == "Weakly" or init.get("synthetic_anomalies") or job.dataset == "synthetic":
            continue  # the weakly chain splits its own way; synthetic splits are generated, not held out
        effective = {**defaults(getattr(crackseg.datamodules, config["data"]["class_path"])), **init, **job.data}
        key = tuple((k, effective.get(k)) for k in bench.SPLIT_KEYS)
        splits.setdefault(f"{job.dataset} ({config['data']['class_path']})", set()).add(key)
    assert splits and all(len(found) == 1 for found in splits.values()), splits


def test_cpu_converge_suite_rows(tmp_path: Path) -> None:
    """SCNet and its HCNN baseline (the ablation fragment) at equal budget, DeepCrack-Liu and U-Net, on both
    datasets, each with early stopping on val/loss and the 90-minute cap."""
    jobs = bench.suite_jobs("cpu-converge", tmp_path, None, "cpu")
    assert [(j.method, j.dataset) for j in jobs] == [
        (m, d) for d in ("CrackForest", "DeepCrack")
        for m in ("SCNet", "HCNN", "SCNet+Adam", "SCNet+BCE", "SCNet+Attn", "HCNN+Adam", "SCNet+Fuse",
                  "SCNet+Adam+Fuse", "SCNet+Adam+Fuse+Plateau", "DeepCrackLiu", "UNet")]
    assert {j.minutes for j in jobs} == {90.0} and {j.patience for j in jobs} == {bench.CONVERGE_PATIENCE}
    hcnn = [j for j in jobs if j.method == "HCNN"]
    assert all(j.fragments == ("configs/scnet/ablations/hcnn_baseline.yaml",) for j in hcnn)
    runner = bench.Runner(bench.argparse.Namespace(workdir=str(tmp_path), accelerator="cpu", suite="cpu-converge"))
    args = runner.trainer_args(hcnn[0], "x")
    assert args[:2] == ["--config", str(bench.REPO / "configs/scnet/ablations/hcnn_baseline.yaml")]
    hcnn_adam = next(j for j in jobs if j.method == "HCNN+Adam")
    ablations = bench.REPO / "configs/scnet/ablations"
    assert runner.trainer_args(hcnn_adam, "x")[:4] == ["--config", str(ablations / "hcnn_baseline.yaml"),
                                                        "--config", str(ablations / "adam.yaml")]  # in order
    assert "--trainer.callbacks.monitor=val/loss" in args and "--trainer.callbacks.mode=min" in args


def test_learning_curves_png(tmp_path: Path) -> None:
    import cv2

    for name, values in (("a", [0.1, 0.3, 0.5]), ("b", [0.2, 0.2])):
        folder = tmp_path / name / "lightning_logs" / "version_0"
        folder.mkdir(parents=True)
        rows = "\n".join(f"{10 * (i + 1)},{v}" for i, v in enumerate(values))
        (folder / "metrics.csv").write_text(f"step,val/ods_dataset\n{rows}\n")
    png = bench.learning_curves({"model a": tmp_path / "a", "model b": tmp_path / "b"}, tmp_path / "curves.png")
    image = cv2.imread(str(png))
    assert image.shape == (520, 900, 3)
    blue = (image[..., 0] > 150) & (image[..., 2] < 80)  # model a's line (RGB 31, 119, 180)
    assert blue.sum() > 100


def test_cpu_anomaly_suite_rows(tmp_path: Path) -> None:
    """The four unsupervised methods on magnetic tile, early stopping on the defect-free val/loss, 60-minute cap;
    the feature autoencoders reuse their features."""
    jobs = bench.suite_jobs("cpu-anomaly", tmp_path, None, "cpu")
    assert [j.method for j in jobs] == ["MSFlow", "SkipAE", "DFR", "VAEGradCAM"]
    assert {j.dataset for j in jobs} == {"magnetic tile"} and {j.minutes for j in jobs} == {60.0}
    assert all(j.model.get("cache_features") for j in jobs if j.method in ("SkipAE", "DFR"))
    args = bench.Runner(bench.argparse.Namespace(workdir=str(tmp_path), accelerator="cpu",
                                                 suite="cpu-anomaly")).trainer_args(jobs[2], "x")
    assert "--trainer.callbacks.monitor=val/loss" in args and "--trainer.callbacks.mode=min" in args
    assert f"--trainer.callbacks.patience={bench.ANOMALY_PATIENCE}" in args


def test_anomaly_diagnosis_pca_residual_finds_vectors_off_the_normal_subspace() -> None:
    import torch

    from benchmarks import anomaly_diagnosis as diag

    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=generator))[0]  # normal features span 3 of 8 channels

    def images(n: int) -> torch.Tensor:
        coefficients = torch.randn(n, 12, 12, 3, generator=generator)
        return (coefficients @ basis.T + 0.01 * torch.randn(n, 12, 12, 8, generator=generator)).movedim(-1, 1)

    train, test = images(40), images(6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    off = torch.linalg.qr(torch.cat([basis, torch.randn(8, 1, generator=generator)], 1))[0][:, 3]
    test[3:, :, 6, 6] += 3 * off  # one defective location, orthogonal to the normal subspace, in the interior
    maps, width = diag.pca_residual(train, test)
    assert width == 3 and maps.shape == (6, 12, 12)
    assert int(maps[3].flatten().argmax()) == 6 * 12 + 6  # the planted location
    scores = diag.score_variants(maps, labels)
    assert scores["max"] == scores["max (no border)"] == 100.0


def test_datasets_filter_refuses_an_empty_selection(workdir: Path) -> None:
    """``--datasets`` keeps the named datasets' rows only; a selection with no row left stops with a message."""
    assert {j.dataset for j in bench.suite_jobs("cpu-converge", workdir, None, "cpu")} == {"CrackForest", "DeepCrack"}
    with pytest.raises(SystemExit, match="no row of suite smoke left to run .* --datasets CrackForest"):
        bench.main(["--suite", "smoke", "--datasets", "CrackForest", "--no-peers", "--workdir", str(workdir)])


def test_epochs_per_run_sets_the_max_epochs_of_every_row(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--epochs-per-run`` replaces each row's epoch count (the trainer's ``max_epochs``); below 1 it is refused."""
    seen = []

    class Ran(Exception):
        pass

    def run_job(self: object, job: bench.Job) -> None:
        seen.append(job)
        raise Ran

    monkeypatch.setattr(bench.Runner, "run_job", run_job)
    with pytest.raises(Ran):
        bench.main(["--suite", "smoke", "--methods", "SCNet", "--epochs-per-run", "7", "--no-peers",
                    "--workdir", str(workdir)])
    assert [(job.method, job.epochs) for job in seen] == [("SCNet", 7)]
    with pytest.raises(SystemExit):
        bench.main(["--suite", "smoke", "--epochs-per-run", "0", "--workdir", str(workdir)])


def test_weakly_benchmark_describes_the_resolved_classifier(tmp_path: Path) -> None:
    """The classifier sentence comes from the config the fit saved (class defaults resolved), not from the short
    config file, which leaves lr and schedule out (the section once read 'SGD lr None schedule None')."""
    from benchmarks.weakly_deepcrack import describe_classifier

    for version, lr in ((1, 0.5), (0, 0.001)):  # fit writes version_0; a later test run writes version_1
        saved = tmp_path / "lightning_logs" / f"version_{version}" / "config.yaml"
        saved.parent.mkdir(parents=True)
        saved.write_text(f"model:\n  init_args:\n    backbone: efficientnet_lite0\n    weights: offline\n"
                         f"    optimizer: sgd\n    lr: {lr}\n    lr_schedule: epoch_step\n")
    text = describe_classifier(tmp_path)
    assert text.startswith("efficientnet_lite0 with the offline ImageNet weights") and "SGD lr 0.001" in text
    assert "schedule epoch_step" in text and "None" not in text
    with pytest.raises(SystemExit, match="no config.yaml saved"):
        describe_classifier(tmp_path / "missing")
