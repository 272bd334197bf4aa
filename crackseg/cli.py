"""The ``crackseg`` command: a thin :class:`~lightning.pytorch.cli.LightningCLI`.

``crackseg fit|validate|test|predict --config configs/<method>/<dataset>.yaml``; configs name the
model and data classes by short ``class_path`` (``class_path: DeepCrackLiu``) and can be composed with
repeated ``--config`` (trainer and logger fragments). ``crackseg fit --help`` lists every option;
``crackseg fit --model DeepCrackLiu --model.help DeepCrackLiu`` shows one class's arguments.

``crackseg pseudo-label --ckpt_path classifier.ckpt --data ... --out DIR`` (not a Lightning subcommand: it is
dispatched before LightningCLI parses) writes a pseudo-labelled dataset (:mod:`crackseg.pseudolabels`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningCLI

import crackseg
import crackseg.callbacks  # noqa: F401  (registers callbacks for short class paths)
from crackseg.datamodules import CrackDataModule
from crackseg.lightning_modules import CrackSegModule


class CrackSegCLI(LightningCLI):
    """LightningCLI with crackseg's base classes in subclass mode and a ``--version`` flag."""

    def init_parser(self, **kwargs: Any) -> Any:
        parser = super().init_parser(**kwargs)
        if not any("--version" in action.option_strings for action in parser._actions):
            parser.add_argument("--version", action="version", version=f"crackseg {crackseg.__version__}")
        return parser

    def predict(self, **kwargs: Any) -> None:
        """Predict without keeping every prediction in memory (the writer callback saves them)."""
        kwargs["return_predictions"] = False
        self.trainer.predict(**kwargs)


DESCRIPTION = ("crackseg: crack and surface-defect segmentation and anomaly detection. Besides the Lightning "
               "subcommands below: `crackseg pseudo-label --help` (weakly supervised pseudo labels from a crack "
               "classifier, written as a DeepCrack-layout dataset).")


def main(args: Sequence[str] | None = None) -> CrackSegCLI | dict[str, Any] | None:
    """Run the CLI; ``args`` (e.g. ``["fit", "--config", "cfg.yaml"]``) replaces ``sys.argv[1:]``.

    Returns the :class:`CrackSegCLI` (``pseudo-label``: its report, :func:`crackseg.pseudolabels.command.main`).
    Without ``args`` (the ``crackseg`` console script, which hands the return value to ``sys.exit``) it returns
    None, so that a successful run exits with status 0 instead of printing the object and exiting with 1.
    """
    argv = list(args) if args is not None else sys.argv[1:]
    if argv and argv[0] == "pseudo-label":
        from crackseg.pseudolabels.command import main as pseudo_label

        report = pseudo_label(argv[1:])
        return report if args is not None else None
    cli = CrackSegCLI(
        CrackSegModule,
        CrackDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        parser_kwargs={"description": DESCRIPTION},
    )
    return cli if args is not None else None


if __name__ == "__main__":
    main()
