"""SLURM: the sbatch templates of scripts/slurm/, the trainer they build under a (fake) SLURM allocation,
and the pre-emption path (SIGUSR1 → checkpoint → ``scontrol requeue`` → resume).

No SLURM here: ``srun`` and ``scontrol`` are replaced by scripts that record their arguments, and the
SLURM_* variables srun would set are given to the process.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import lightning.fabric.utilities.rank_zero as fabric_rank_zero
import lightning_utilities.core.rank_zero as utils_rank_zero
import pytest
from lightning import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from crackseg.cli import CrackSegCLI
from crackseg.datamodules import CrackDataModule
from crackseg.lightning_modules import CrackSegModule

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((REPO / "scripts/slurm").glob("*.sbatch"))


def _sbatch_options(template: Path) -> dict[str, str]:
    options = {}
    for line in template.read_text().splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if match:
            options[match.group(1)] = match.group(2) or ""
    return options


def _fake_tool(folder: Path, name: str, record: Path) -> None:
    """An executable ``name`` that writes its arguments (one per line) to ``record`` and succeeds."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    tool.chmod(0o755)


def _slurm_env(monkeypatch: pytest.MonkeyPatch, nodes: int, tasks_per_node: int, procid: int,
               job_id: str = "4242") -> None:
    """What srun sets for task ``procid`` of a ``nodes`` x ``tasks_per_node`` job."""
    for key in [k for k in os.environ if k.startswith("SLURM_")] + ["LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"]:
        monkeypatch.delenv(key, raising=False)
    values = {
        "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "crackseg", "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NTASKS_PER_NODE": f"{tasks_per_node}(x{nodes})" if nodes > 1 else str(tasks_per_node),
        "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes), "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % tasks_per_node), "SLURM_NODEID": str(procid // tasks_per_node),
        "SLURM_NODELIST": f"gpu[017-{17 + nodes - 1:03d}]" if nodes > 1 else "gpu017",
        "SLURM_CPUS_PER_TASK": "2", "SLURM_SUBMIT_DIR": str(REPO),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_is_valid_and_requeues(template: Path) -> None:
    assert subprocess.run(["bash", "-n", str(template)], capture_output=True).returncode == 0
    options = _sbatch_options(template)
    assert options["signal"] == "SIGUSR1@90"  # the pre-emption warning Lightning's SLURMEnvironment handles
    assert "requeue" in options
    assert options["ntasks-per-node"] == options["gpus-per-node"]  # one process per GPU
    assert "srun crackseg fit" in template.read_text()


@pytest.mark.parametrize(("template", "nodes", "tasks"), [("single_node.sbatch", 1, 2), ("multi_node.sbatch", 2, 2)])
def test_template_command_builds_the_slurm_trainer(template: str, nodes: int, tasks: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the template with a recording srun, then build the trainer from the recorded command as task 3 would."""
    bin_dir, record = tmp_path / "bin", tmp_path / "srun_args"
    _fake_tool(bin_dir, "srun", record)
    _slurm_env(monkeypatch, nodes, tasks, procid=0)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CRACKSEG_REPO": str(REPO),
           "RUN_DIR": str(run_dir)}
    config = "configs/scnet/synthetic.yaml"
    script = REPO / "scripts/slurm" / template
    proc = subprocess.run(["bash", str(script), config, "--data.init_args.root", str(tmp_path / "data")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    command = record.read_text().splitlines()
    assert command[:2] == ["crackseg", "fit"]
    args = command[2:]
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert configs[0] == config and all((REPO / c).is_file() for c in configs)
    assert args[args.index("--ckpt_path") + 1] == "last"  # no pre-emption checkpoint yet: last.ckpt
    assert args[args.index("--trainer.default_root_dir") + 1] == str(run_dir)

    # after a pre-emption the requeued job lets Lightning resume from the HPC checkpoint instead
    run_dir.mkdir()
    (run_dir / "hpc_ckpt_1.ckpt").touch()
    assert subprocess.run(["bash", str(script), config], env=env, capture_output=True).returncode == 0
    assert "--ckpt_path" not in record.read_text().splitlines()

    # the trainer of task 3 (no GPU here: the same command on CPU processes); Lightning records the rank in
    # process-wide rank_zero_only.rank, restored after the test
    for holder in (fabric_rank_zero.rank_zero_only, utils_rank_zero.rank_zero_only):
        monkeypatch.setattr(holder, "rank", getattr(holder, "rank", 0))
    _slurm_env(monkeypatch, nodes, tasks, procid=3 if nodes > 1 else 1)
    monkeypatch.chdir(REPO)
    cli = CrackSegCLI(CrackSegModule, CrackDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      args=[*[a for a in args if a not in ("--ckpt_path", "last")], "--trainer.accelerator=cpu",
                            "--trainer.precision=32-true", "--trainer.sync_batchnorm=false",
                            "--model.init_args.width_multiplier=0.0625", "--trainer.logger=false"])
    trainer = cli.trainer
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    assert trainer.num_nodes == nodes and trainer.num_devices == tasks
    assert environment.world_size() == nodes * tasks == trainer.world_size
    assert trainer.global_rank == environment.global_rank() == (3 if nodes > 1 else 1)
    assert trainer.local_rank == 1 and trainer.node_rank == (1 if nodes > 1 else 0)
    assert environment.main_address == "gpu017"
    assert str(trainer.default_root_dir) == str(run_dir)


class _PreemptAt(Callback):
    """Sends the pre-emption signal to this process after training batch ``batch``."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_preemption_saves_requeues_and_resumes(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = workdir / "scontrol_args"
    _fake_tool(workdir / "bin", "scontrol", record)
    monkeypatch.setenv("PATH", f"{workdir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    _slurm_env(monkeypatch, nodes=1, tasks_per_node=1, procid=0, job_id="777")
    args = ["fit", "--config", str(REPO / "configs/trainer/slurm.yaml"), "--data", "SyntheticCracksDataModule",
            f"--data.init_args.root={workdir / 'data'}", "--data.init_args.n_train=4", "--data.init_args.n_val=2",
            "--data.init_args.n_test=2", "--data.init_args.generate_size=[32, 32]", "--data.init_args.crop_size=null",
            "--data.init_args.batch_size=1", "--data.init_args.check_files=none", "--model", "UNet",
            "--model.init_args.base_channels=4", "--model.init_args.depth=2", "--trainer.accelerator=cpu",
            "--trainer.devices=1", "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={workdir / 'run'}"]
    handler_before = signal.getsignal(signal.SIGUSR1)

    def build() -> CrackSegCLI:
        return CrackSegCLI(CrackSegModule, CrackDataModule, subclass_mode_model=True, subclass_mode_data=True,
                           run=False, save_config_kwargs={"overwrite": True}, args=args[1:])

    cli = build()
    cli.trainer.callbacks.append(_PreemptAt(2))
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except SIGTERMException:  # crackseg's SignalCheckpoint also saves last.ckpt and stops the pre-empted run
        pass
    checkpoint = workdir / "run/hpc_ckpt_1.ckpt"
    assert checkpoint.is_file(), "no HPC checkpoint was saved on SIGUSR1"
    assert record.read_text().split() == ["requeue", "777"]
    assert signal.getsignal(signal.SIGUSR1) == handler_before  # handlers restored after fit

    # the requeued job: same command, no --ckpt_path; Lightning resumes from the HPC checkpoint
    cli = build()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert Path(cli.trainer.ckpt_path) == checkpoint
    assert cli.trainer.global_step == 4


@pytest.mark.parametrize("fragment", sorted(p.name for p in (REPO / "configs/trainer").glob("*.yaml")))
def test_trainer_fragment_parses(fragment: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each trainer fragment (precision, devices, DDP, nodes, SLURM) composes with a method config."""
    import yaml

    from crackseg.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / "configs/scnet/synthetic.yaml"), "--config",
              str(REPO / "configs/trainer" / fragment), "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for key, value in yaml.safe_load((REPO / "configs/trainer" / fragment).read_text())["trainer"].items():
        if key == "plugins":
            assert printed["plugins"][0]["class_path"] == value[0]["class_path"]
            assert printed["plugins"][0]["init_args"]["auto_requeue"] is True
        else:
            assert printed[key] == value, f"{fragment}: trainer.{key}"
