"""``crackseg export``: a trained model as one ONNX graph, from [0, 1] RGB images to map, mask, score and label.

::

    crackseg export --ckpt_path model.ckpt --out model.onnx [--opset 18] [--image_size 256 256] [--dynamic]
        [--verify true|false] [--exporter auto|dynamo|torchscript] [--model UNet] [--threshold 0.4]

The graph takes ``images`` (B, 3, H, W) float32 RGB in [0, 1] and holds everything the LightningModule does at
inference (:meth:`~crackseg.lightning_modules.CrackSegModule.evaluate_batch`): the input normalisation and the
reflect-padding to the network's stride, the network, the map (``anomaly_map`` hook), the image score
(``image_score`` hook) and the thresholds stored in the checkpoint (``pixel_threshold`` / ``image_threshold``
buffers, or the values given here). Outputs: ``map`` (B, 1, H, W) float32, ``mask`` (B, 1, H, W) bool
(``map >= pixel_threshold``), ``score`` (B,) float32 and ``label`` (B,) bool (``score >= image_threshold``).

The checkpoint's class comes from its ``hyper_parameters`` (``_class_path``, written by ``crackseg fit``);
a checkpoint without it (a module saved from Python) needs ``--model CLASS``. Construction-time weight
sources (``weights: hub``, ``extractor_checkpoint``) are skipped: the checkpoint holds every tensor.

Exporters (``--exporter``, torch 2.15): ``auto`` (default) tries the dynamo exporter (``torch.export``, needs
``onnxscript``) and falls back to the TorchScript tracing exporter (``dynamo=False``). Neither covers every method:
dynamo is needed for MSFlow's adaptive pooling and SCNet's Canny loop, and refuses data-dependent Python control flow
instead of freezing it; tracing is needed for the backbones whose taps are forward hooks that stop the network early
(OED, DFR's VGG19 layers), which ``torch.export`` cannot follow. Two exporter-only substitutions, checked equal to the
eager code: ``median`` by sorting (ONNX has no median) and SCNet's Canny hysteresis as a ``while_loop`` (an ONNX
``Loop``). ``--dynamic``: dynamic batch; with dynamo also height and width where the model allows (multiples of its
stride: the padding branch is not in the graph), with tracing height and width stay fixed. Methods that cannot export
say why (:class:`ExportError`): VAEGradCAM with ``attention: gradcam`` (its map is a gradient, which a forward-only
graph cannot compute).

With ``onnxruntime`` installed, ``--verify`` (default on) runs random images through the ONNX graph and the
PyTorch module and reports the largest differences; without it the export is written and verification is
skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crackseg.checkpoint import CheckpointError
from crackseg.checkpoint import load_module as load_checkpoint_module
from crackseg.lightning_modules.base import CrackSegModule

__all__ = ["ExportError", "ExportWrapper", "export_onnx", "load_module", "main", "verify_onnx"]

#: ONNX opset written unless told otherwise (18: Resize with antialias; the default of both exporters here)
DEFAULT_OPSET = 18
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["map", "mask", "score", "label"]
EXPORTERS = ("auto", "dynamo", "torchscript")
#: parity tolerance of verification, relative to max(1, the output's range)
PARITY_RTOL = 1e-4
#: hyper-parameters naming where weights come from at construction; the checkpoint holds the tensors anyway
class ExportError(ValueError):
    """The checkpoint cannot be loaded, or its model cannot be expressed as a forward-only ONNX graph."""


class ExportWrapper(nn.Module):
    """A :class:`CrackSegModule` at inference as a plain module: images → (map, mask, score, label).

    The same hooks as :meth:`CrackSegModule.evaluate_batch` (``forward``, ``anomaly_map``, ``image_score``)
    and the module's threshold buffers; the module is put in eval mode.

    Args:
        module: the trained LightningModule.
    """

    def __init__(self, module: CrackSegModule) -> None:
        super().__init__()
        self.module = module.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, 3, H, W) RGB in [0, 1] → map (B, 1, H, W), mask (bool), score (B,), label (bool)."""
        module = self.module
        outputs = module(images)
        maps = module.anomaly_map(outputs).float()
        scores = module.image_score(maps, outputs).float()
        return maps, maps >= module.pixel_threshold, scores, scores >= module.image_threshold


def load_module(ckpt_path: str | Path, model: str | None = None, threshold: float | None = None,
                image_threshold: float | None = None) -> CrackSegModule:
    """The trained module of a Lightning checkpoint, on the CPU, in eval mode
    (:func:`crackseg.checkpoint.load_module`).

    Args:
        ckpt_path: checkpoint written by ``crackseg fit`` (or any Lightning checkpoint of a CrackSegModule).
        model: class name (``UNet``) or import path; required when the checkpoint does not name its class
            (no ``_class_path`` in its ``hyper_parameters``), else it must agree with it.
        threshold: pixel threshold to use instead of the stored one.
        image_threshold: image threshold to use instead of the stored one.

    Raises:
        ExportError: missing or unreadable file, unknown class, or weights that do not fit the class.
    """
    overrides = {k: v for k, v in (("threshold", threshold), ("image_threshold", image_threshold)) if v is not None}
    try:
        module = load_checkpoint_module(ckpt_path, model, base=CrackSegModule, **overrides)
    except CheckpointError as error:
        raise ExportError(f"--ckpt_path: {error}") from None
    return module.eval()


def check_exportable(module: CrackSegModule) -> None:
    """Raise :class:`ExportError` naming the reason when ``module``'s inference is not a forward-only graph."""
    reason = module.export_blocker()  # the method declares it (CrackSegModule.export_blocker)
    if reason is not None:
        raise ExportError(reason)


def default_image_size(module: CrackSegModule) -> tuple[int, int]:
    """The size the example input is traced at: the module's ``image_size`` when it has one, else 256²."""
    size = getattr(module, "image_size", None)
    if size is not None and len(size) == 2:
        return int(size[0]), int(size[1])
    return 256, 256


def export_onnx(module: CrackSegModule, out: str | Path, image_size: Sequence[int] | None = None,
                opset: int = DEFAULT_OPSET, dynamic: bool = False, batch_size: int = 1,
                exporter: str = "auto") -> tuple[Path, str]:
    """Write ``module``'s inference graph (:class:`ExportWrapper`) to ``out`` as ONNX.

    Args:
        module: a trained CrackSegModule.
        out: the .onnx file (its folder is created; written to a temporary file first, so a failed export
            leaves any earlier file as it was).
        image_size: (height, width) of the example input; with ``dynamic`` other sizes work at run time.
        opset: ONNX opset version.
        dynamic: dynamic batch, and with the dynamo exporter dynamic height and width, as multiples of the
            network's stride (the graph does not pad: the example is traced at a multiple, rounded up from
            ``image_size``); the torchscript exporter keeps height and width fixed.
        batch_size: batch of the example input (the graph's batch when not ``dynamic``).
        exporter: ``"dynamo"`` (``torch.export``, needs onnxscript), ``"torchscript"`` (the tracing exporter,
            ``dynamo=False``) or ``"auto"`` (dynamo, then torchscript when dynamo fails or is not installed).

    Returns:
        The file and the exporter that wrote it.

    Raises:
        ExportError: the method cannot be exported (the reason named) or every exporter failed.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"--exporter must be one of {EXPORTERS}, got {exporter!r}")
    check_exportable(module)
    height, width = image_size if image_size is not None else default_image_size(module)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(module)
    if dynamic:  # batch 2 (torch.export specialises sizes 0 and 1) at a multiple of the stride
        stride = module.stride
        batch_size, height, width = 2, -(-int(height) // stride) * stride, -(-int(width) // stride) * stride
    example = torch.rand(batch_size, 3, int(height), int(width), generator=torch.Generator().manual_seed(0))
    tmp = out.with_name(f".{out.name}.tmp")
    failures = []
    for name in (("dynamo", "torchscript") if exporter == "auto" else (exporter,)):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer / deprecation warnings; parity is verified instead
                if name == "dynamo":
                    _export_dynamo(wrapper, example, tmp, opset, dynamic)
                else:
                    _export_torchscript(wrapper, example, tmp, opset, dynamic)
        except Exception as error:  # noqa: BLE001  (each exporter fails in its own way)
            tmp.unlink(missing_ok=True)
            failures.append(f"{name} exporter: {_reason(error)}")
            continue
        tmp.replace(out)
        return out, name
    raise ExportError(f"{type(module).__name__} could not be exported to ONNX (opset {opset}): "
                      + "; ".join(failures))


def dynamic_axes(path: str | Path) -> list[str]:
    """The input axes of an exported graph that are not fixed (``batch``, ``height``, ``width``)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [name for name, dim in zip(("batch", "channels", "height", "width"), dims, strict=True)
            if not dim.HasField("dim_value")]


def _reason(error: BaseException) -> str:
    """One line naming an exception (torch.onnx wraps the real cause: use the innermost)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:400] if text else ''}"


def _export_dynamo(wrapper: ExportWrapper, example: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    """``torch.export`` (non-strict) → decompositions (+ :func:`_median_dim`) → ``torch.onnx.export``."""
    import onnxscript  # noqa: F401  (the dynamo exporter's translation library; a clear ImportError without it)

    auto = torch.export.Dim.AUTO  # dynamic where the model allows, guards (multiples of the stride) kept
    dims = ({0: auto, 2: auto, 3: auto},) if dynamic else None
    program = torch.export.export(wrapper, (example,), dynamic_shapes=dims, strict=False)
    table = torch.export.default_decompositions()
    table[torch.ops.aten.median.dim] = _median_dim
    program = program.run_decompositions(table)
    torch.onnx.export(program, (example,), str(path), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                      opset_version=opset, dynamo=True, external_data=False, verbose=False)


def _export_torchscript(wrapper: ExportWrapper, example: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    """The tracing exporter (``dynamo=False``): Python control flow is fixed at the example's values."""
    dynamic_axes = None
    if dynamic:  # the batch only: the tracer fixes Python arithmetic on height and width (padding, crops)
        batch = {0: "batch"}
        dynamic_axes = {name: batch for name in INPUT_NAMES + OUTPUT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the whole graph when it fails
        torch.onnx.export(wrapper, (example,), str(path), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False)


def _median_dim(x: Tensor, dim: int, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    """``torch.median(x, dim)`` (the lower middle value) by sorting: ONNX has no median operator."""
    values, indices = torch.sort(x, dim=dim)
    middle = (x.shape[dim] - 1) // 2
    values, indices = values.narrow(dim, middle, 1), indices.narrow(dim, middle, 1)
    if not keepdim:
        values, indices = values.squeeze(dim), indices.squeeze(dim)
    return values, indices


def verify_onnx(path: str | Path, module: CrackSegModule, image_size: Sequence[int], batch_size: int = 2,
                seed: int = 0, progress: bool = True) -> dict[str, Any] | None:
    """Run random [0, 1] images through the ONNX graph (ONNX Runtime, CPU) and the module; compare.

    Returns None when onnxruntime is not installed, else :func:`compare_outputs`'s report.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from rich.progress import Progress

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, int(image_size[0]), int(image_size[1]), generator=generator)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("Verifying: ONNX Runtime vs PyTorch", total=3)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        bar.advance(task)
        got = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images.numpy()})
        bar.advance(task)
        with torch.no_grad():
            want = [t.numpy() for t in ExportWrapper(module)(images)]
        bar.advance(task)
    report = compare_outputs(want, got, float(module.pixel_threshold), float(module.image_threshold))
    report["images"] = [batch_size, 3, int(image_size[0]), int(image_size[1])]
    return report


def compare_outputs(want: Sequence[Any], got: Sequence[Any], pixel_threshold: float,
                    image_threshold: float, rtol: float = PARITY_RTOL) -> dict[str, Any]:
    """Differences between PyTorch (``want``) and ONNX Runtime (``got``) outputs (map, mask, score, label).

    The map tolerance is ``rtol`` × max(1, the map's range); the score's likewise. Mask (label) disagreements
    are counted over all pixels (images) and over those whose map value (score) is farther than the tolerance
    from the threshold, where a disagreement is a real error. ``ok``: shapes equal, map and score within
    tolerance and no disagreement outside the tolerance band.
    """
    import numpy as np

    (map_t, mask_t, score_t, label_t), (map_o, mask_o, score_o, label_o) = want, got
    if map_t.shape != map_o.shape or score_t.shape != score_o.shape:
        return {"ok": False, "error": f"output shapes differ: map {map_t.shape} vs {map_o.shape}, "
                                      f"score {score_t.shape} vs {score_o.shape}"}
    map_tol = rtol * max(1.0, float(np.ptp(map_t)), abs(pixel_threshold))
    score_tol = rtol * max(1.0, float(np.ptp(score_t)), abs(image_threshold))
    mismatch = mask_t != mask_o.astype(bool)
    label_mismatch = label_t != label_o.astype(bool)
    report: dict[str, Any] = {
        "max_abs_map": float(np.abs(map_t - map_o).max()),
        "map_tolerance": map_tol,
        "max_abs_score": float(np.abs(score_t - score_o).max()),
        "score_tolerance": score_tol,
        "mask_mismatch": int(mismatch.sum()),
        "mask_mismatch_outside_tolerance": int((mismatch & (np.abs(map_t - pixel_threshold) > map_tol)).sum()),
        "label_mismatch_outside_tolerance": int(
            (label_mismatch & (np.abs(score_t - image_threshold) > score_tol)).sum()),
    }
    report["ok"] = (report["max_abs_map"] <= map_tol and report["max_abs_score"] <= score_tol
                    and report["mask_mismatch_outside_tolerance"] == 0
                    and report["label_mismatch_outside_tolerance"] == 0)
    return report


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``crackseg export``."""
    parser = argparse.ArgumentParser(prog="crackseg export", description=(
        "Export a trained crackseg model to ONNX: input [0, 1] RGB images (B, 3, H, W); outputs map, mask "
        "(map >= the checkpoint's pixel threshold), score and label (score >= its image threshold). The "
        "normalisation, padding and thresholds are inside the graph."))
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by crackseg fit")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version (default %(default)s)")
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input height and width (default: the model's image_size, else 256 256)")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch; with the dynamo exporter also height and width, as multiples of the "
                             "network's stride (default: fixed to --image_size and --batch_size)")
    parser.add_argument("--batch_size", type=int, default=1, help="batch of a fixed-size graph (default 1)")
    parser.add_argument("--verify", type=_boolean, default=None, metavar="{true,false}",
                        help="compare ONNX Runtime with PyTorch on random images (default: true when onnxruntime "
                             "is installed)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto",
                        help="torch.onnx exporter: dynamo (torch.export), torchscript (tracing) or auto (dynamo, "
                             "then torchscript when it fails; default)")
    parser.add_argument("--model", default=None, help="model class when the checkpoint does not name it "
                                                      "(e.g. UNet, SCNet, crackseg.lightning_modules.MSFlow)")
    parser.add_argument("--threshold", type=float, default=None, help="pixel threshold instead of the stored one")
    parser.add_argument("--image_threshold", type=float, default=None,
                        help="image threshold instead of the stored one")
    parser.add_argument("--progress", type=_boolean, default=True, metavar="{true,false}",
                        help="show progress bars (default true)")
    return parser


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``crackseg export`` with ``args`` (the options after the subcommand); returns the report.

    Exits with status 2 when the model cannot be loaded or exported, 1 when verification finds a difference
    beyond the tolerance (the file is kept: the report says where it differs).
    """
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    if cfg.image_size is not None and min(cfg.image_size) < 1:
        parser.error(f"--image_size must be positive, got {cfg.image_size}")
    if cfg.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {cfg.batch_size}")
    from rich.progress import Progress

    try:
        with Progress(transient=True, disable=not cfg.progress) as bar:
            task = bar.add_task(f"Loading {cfg.ckpt_path}", total=None)
            module = load_module(cfg.ckpt_path, cfg.model, cfg.threshold, cfg.image_threshold)
            size = tuple(cfg.image_size) if cfg.image_size is not None else default_image_size(module)
            bar.update(task, description=f"Exporting {type(module).__name__} to {cfg.out}")
            out, exporter = export_onnx(module, cfg.out, size, cfg.opset, cfg.dynamic, cfg.batch_size, cfg.exporter)
    except ExportError as error:
        parser.exit(2, f"crackseg export: error: {error}\n")
    dynamic = dynamic_axes(out)
    if {"height", "width"} & set(dynamic):
        dynamic = [f"{axis} (a multiple of {module.stride})" if axis in ("height", "width") and module.stride > 1
                   else axis for axis in dynamic]
    report: dict[str, Any] = {"model": type(module).__name__, "out": str(out), "exporter": exporter,
                              "opset": cfg.opset, "image_size": list(size), "dynamic": dynamic,
                              "pixel_threshold": float(module.pixel_threshold),
                              "image_threshold": float(module.image_threshold)}
    if cfg.verify is not False:
        check_size, batch = size, cfg.batch_size
        if cfg.dynamic:  # checked at another batch (and size) than it was traced with
            stride, batch = module.stride, 3
            if "height" in " ".join(dynamic):
                check_size = (-(-size[0] // stride) * stride + stride, -(-size[1] // stride) * stride + 2 * stride)
        difference = verify_onnx(out, module, check_size, batch_size=batch, progress=cfg.progress)
        if difference is None:
            message = "onnxruntime is not installed: verification skipped (pip install onnxruntime)"
            print(f"crackseg export: {message}", file=sys.stderr)
            report["verification"] = message
        else:
            report["verification"] = difference
    print(json.dumps(report, indent=2))
    verification = report.get("verification")
    if isinstance(verification, dict) and not verification["ok"]:
        parser.exit(1, f"crackseg export: error: ONNX Runtime and PyTorch outputs differ beyond the tolerance "
                       f"(see the report above); {out} is kept for inspection\n")
    print(f"ONNX model written to {out} ({exporter} exporter, opset {cfg.opset})")
    return report
