"""Every command in a ```bash block of README.md and docs/*.md runs as written.

Commands run in order, one temporary working directory per file (a later command may use an earlier
one's output), on the demo pair (the commands' default) under the test session's cache directory.
A command that takes minutes carries `long: <why>` in a trailing comment or in the comment line right
above it: it is reported as skipped with that reason, never silently dropped.
"""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\s*\n(.*?)^```", re.S | re.M)


def commands(page: Path) -> list[tuple[str, str | None]]:
    """(command, reason it is long or None) for every command line of the page's shell blocks."""
    out = []
    for block in SHELL_BLOCK.findall(page.read_text()):
        block = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        above = ""
        for line in block.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                above = line
                continue
            cmd, _, comment = line.partition("  #")
            long = re.search(r"long:\s*(.*)$", comment) or re.search(r"long:\s*(.*)$", above)
            reason = long.group(1).strip() if long else None
            if reason and reason.endswith(")") and reason.count("(") < reason.count(")"):
                reason = reason[:-1]  # "(long: why)" in a comment line
            out.append((cmd.strip(), reason))
            above = ""
    return out


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CASES = [(page.relative_to(ROOT).as_posix(), n, cmd, long) for page in PAGES
         for n, (cmd, long) in enumerate(commands(page))]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {}


@pytest.mark.parametrize("page,n,cmd,long", CASES, ids=[f"{p}#{n}" for p, n, _, _ in CASES])
def test_command_runs_as_written(page, n, cmd, long, workdirs, tmp_path_factory):
    if long is not None:
        pytest.skip(f"long: {long}")
    cwd = workdirs.setdefault(page, tmp_path_factory.mktemp(page.replace("/", "_")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{page}: `{cmd}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def test_the_pages_show_commands():
    """The extraction is not vacuous: the README's quick start is found and marked long, its tour runs."""
    readme = dict(commands(ROOT / "README.md"))
    assert readme["pip install torch==2.13.0 && pip install -e . && l0score demo"].startswith("installs")
    assert readme["bash .ci/run"]  # the test command installs everything the suite needs
    assert sum(1 for c, long in readme.items() if c.startswith("l0score ") and long is None) >= 5
