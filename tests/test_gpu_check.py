"""``benchmarks/gpu_check.sh --dry-run``: every step of the GPU check runs on the CPU, tiny, and its section is
written to the dry run's own RESULTS.md (never to benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fakes import make_crackforest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    cfd = make_crackforest(tmp_path / "cfd", n=8, size=(64, 96))
    results = REPO / "benchmarks" / "RESULTS.md"
    before = results.read_text() if results.is_file() else None
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "check"), "CFD_ROOT": str(cfd),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "check" / "RESULTS.md").read_text()
    section = text.split("<!-- begin gpu_check -->")[1].split("<!-- end gpu_check -->")[0]
    for title in ("training throughput", "full-width SCNet", "pseudo-label speed", "tiled prediction"):
        assert f"{title}" in section
    assert section.count(": ok,") == 4, section  # no step failed, timed out or was skipped
    assert "| UNet | 32² | cpu | bf16-mixed |" in section  # the measured rows, not only headers
    assert "| 320 x 240 | 128 | 2 |" in section
    assert (results.read_text() if results.is_file() else None) == before
