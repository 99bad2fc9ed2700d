"""Issue 11, item 3: the CLI caps OpenMP spin-waiting before torch loads, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from refdiff_cli.cli import GOMP_SPINCOUNT

#: Runs the ``python -m refdiff_cli`` entry point and prints GOMP_SPINCOUNT as the process ends.
PROBE = (
    "import atexit, os, runpy\n"
    "atexit.register(lambda: print('GOMP_SPINCOUNT=' + os.environ.get('GOMP_SPINCOUNT', '-')))\n"
    "runpy.run_module('refdiff_cli', run_name='__main__')\n"
)


def spincount_seen(**env: str) -> str:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--version"],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1].split("=", 1)[1]


def test_the_cli_caps_openmp_spinning() -> None:
    assert spincount_seen() == GOMP_SPINCOUNT


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"GOMP_SPINCOUNT": "infinite"}, "infinite"), ({"OMP_WAIT_POLICY": "active"}, "-")],
)
def test_a_users_openmp_setting_is_kept(env: dict[str, str], expected: str) -> None:
    assert spincount_seen(**env) == expected
