"""The layer order of docs/architecture.md holds: `lint-imports` checks the contracts in pyproject.toml
(cli -> harnesses -> synthetic -> cluster -> hunt -> search -> judge | analysis -> report -> engine;
no cluster in judge/search/hunt; report renders files: no scorer, weights, torch or transformers)."""
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or pytest.fail("lint-imports not found: pip install -e '.[test]'")
    return subprocess.run([exe, "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_layer_contracts_hold():
    proc = lint_imports(ROOT / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


def test_a_crossing_import_breaks_a_contract(tmp_path):
    """Not vacuous: the checker reads the real package, so a contract the code breaks (cli imports
    core, forbidden here) is reported with the importing module."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "l0score"\n\n[[tool.importlinter.contracts]]\n'
                      'name = "no core in cli"\ntype = "forbidden"\nsource_modules = ["l0score.cli.args"]\n'
                      'forbidden_modules = ["l0score.core.template"]\n')
    proc = lint_imports(config)
    assert proc.returncode != 0 and "l0score.cli.args -> l0score.core.template" in proc.stdout, proc.stdout[-2000:]


def test_report_contract_catches_torch_and_the_weights(tmp_path):
    """The report-renders contract as pyproject.toml states it, applied to a module that does compute
    (core.reference: torch and the checkpoint's weights), is broken on exactly those imports; so report/
    keeping it means report/ reaches none of them, directly or through another l0score module."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["id"] == "report-renders")
    lines = ['[tool.importlinter]', 'root_package = "l0score"',
             f'include_external_packages = {str(config["include_external_packages"]).lower()}', '',
             '[[tool.importlinter.contracts]]', 'name = "reference as if it were report"', 'type = "forbidden"',
             'source_modules = ["l0score.core.reference"]', f'forbidden_modules = {contract["forbidden_modules"]!r}']
    (tmp_path / "contracts.toml").write_text("\n".join(lines).replace("'", '"') + "\n")
    proc = lint_imports(tmp_path / "contracts.toml")
    assert proc.returncode != 0, proc.stdout[-2000:]
    for edge in ("l0score.core.reference -> torch", "l0score.core.reference -> l0score.core.checkpoint"):
        assert edge in proc.stdout, proc.stdout[-2000:]
