"""Issue 11, item 2: `torchrun -m refdiff_cli upscale` on 2 CPU processes (gloo) writes the bytes
one process writes, for one scene shared by tile rows and for a batch dealt out by job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_DATA, SAMPLE_INPUTS, run_cli
from tests.integration.test_upscale_resume import KILLER

#: The sample scene in 16 tiles (4 tile rows, so each rank computes 2) through the guided engine.
OPTIONS = ["--engine", "guided", "--tile", "128", "--overlap", "32", "--margin", "16", "--json"]
#: One thread per process, as torchrun sets it: the single-process run matches it.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def torchrun(
    args: list[str], processes: int = 2, script: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m refdiff_cli ARGS``
    (``--standalone``: a free local port, so parallel runs never clash), or ``script ARGS``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes)]
    command += ["-m", "refdiff_cli"] if script is None else [str(script)]
    command += args
    env = {**os.environ, **ONE_THREAD, "NO_COLOR": "1", **extra_env}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=240, check=False
    )


def test_two_ranks_share_one_scene_by_tile_rows_to_the_same_bytes(tmp_path: Path) -> None:
    one, two = tmp_path / "one.tif", tmp_path / "two.tif"
    single = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(one), *OPTIONS], env=ONE_THREAD)
    assert single.returncode == 0, single.stderr

    shared = torchrun(["upscale", *SAMPLE_INPUTS, "-o", str(two), *OPTIONS])
    assert shared.returncode == 0, shared.stderr
    assert two.read_bytes() == one.read_bytes()
    report = json.loads(shared.stdout)  # rank 0 alone prints: one JSON document
    assert report["status"] == "written" and report["report"]["tiles"] == 16
    assert shared.stderr.count("wrote ") == 1, shared.stderr


@pytest.mark.slow
def test_two_ranks_share_a_batch_by_jobs_to_the_same_bytes(tmp_path: Path) -> None:
    lrs = []
    for name in ("a", "b", "c"):
        lrs.append(tmp_path / f"{name}.tif")
        shutil.copyfile(SAMPLE_DATA / "lr.tif", lrs[-1])
    refs = ["--ref", str(SAMPLE_DATA / "ref.tif"), "--mask", str(SAMPLE_DATA / "cd.tif")]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = run_cli(
        ["upscale", *map(str, lrs), *refs, "-o", str(tmp_path / "one"), *OPTIONS], env=ONE_THREAD
    )
    assert single.returncode == 0, single.stderr

    shared = torchrun(["upscale", *map(str, lrs), *refs, "-o", str(tmp_path / "two"), *OPTIONS])
    assert shared.returncode == 0, shared.stderr
    report = json.loads(shared.stdout)
    assert [Path(item["output"]).name for item in report["items"]] == [
        "a_sr.tif",
        "b_sr.tif",
        "c_sr.tif",
    ]
    assert report["counts"] == {"written": 3}
    for name in ("a_sr.tif", "b_sr.tif", "c_sr.tif"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


@pytest.mark.slow
def test_a_shared_scene_killed_on_rank_0_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    one, two = tmp_path / "one.tif", tmp_path / "two.tif"
    blocks = ["--co", "BLOCKXSIZE=64", "--co", "BLOCKYSIZE=64"]
    args = ["upscale", *SAMPLE_INPUTS, *OPTIONS, *blocks]
    assert run_cli([*args, "-o", str(one)], env=ONE_THREAD).returncode == 0
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)  # SIGKILL after 3 strips: torchrun then stops rank 1 too
    first = torchrun([*args, "-o", str(two)], script=killer, REFDIFF_TEST_KILL_AFTER="3")
    assert first.returncode != 0 and not two.exists()

    rerun = torchrun([*args, "-o", str(two)])
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["report"]["resumed_strips"] == 3
    assert two.read_bytes() == one.read_bytes()
