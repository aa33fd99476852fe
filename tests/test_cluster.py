"""Ray scale-out (l0score.cluster). Without --ray nothing imports Ray; with it, the cases in
tests/ray_cases.py run in a network namespace of their own with only loopback up, since Ray binds to
the machine's interface address whatever it is told (everything is installed before entering it)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def test_nothing_imports_ray_without_the_switch(tiny_pair, tmp_path):
    code = f"""
import sys
import l0score
from l0score import Scorer
from l0score.cli import build_parser
from l0score.search import beam, pair_scan
scorer = Scorer.from_pretrained({str(tiny_pair / 'base')!r}, {str(tiny_pair / 'dormant')!r}, template="raw")
pair_scan(scorer, scorer.default_pool(), offsets=(1,), top=5, progress=False)
beam(scorer, length=2, width=2, objective="kl", progress=False, out={str(tmp_path / 'b.jsonl')!r})
build_parser()
assert "ray" not in sys.modules, "ray was imported"
print("no ray")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "no ray" in out.stdout, out.stderr[-3000:]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a private network namespace needs root and unshare(1)")
def test_ray_cases_in_a_loopback_namespace():
    import ray  # noqa: F401  (installed by the test extra; imported here so a missing install fails clearly)

    inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider {TESTS / 'ray_cases.py'}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["unshare", "-n", "sh", "-c", inner], capture_output=True, text=True, timeout=900,
                         env=env, cwd=TESTS.parent)
    tail = (out.stdout + out.stderr)[-6000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and "failed" not in out.stdout, tail


def test_bench_ray_paper_table():
    """`l0score bench --ray --paper`: the N-GPU-node estimate, scan and hunt time shrinking with N."""
    out = subprocess.run([sys.executable, "-m", "l0score.cli", "bench", "--ray", "--paper"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[1]) for r in rows] == [1, 2, 4, 8, 16, 32]
    scan_low = [float(r[2].split("-")[0]) for r in rows]
    assert scan_low == sorted(scan_low, reverse=True) and scan_low[0] > scan_low[-1]
