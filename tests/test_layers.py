"""The package layering (pyproject's [tool.importlinter] contracts) holds: each package imports only
the packages below it, so there are no import cycles between packages. And the check can fail: the
same contracts on a copy of the package with one upward import added are broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=path, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_packages_import_only_the_layers_below_them() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "sampler", tmp_path / "sampler", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    queue = tmp_path / "sampler" / "exporters" / "queue.py"
    queue.write_text(queue.read_text() + "\nfrom sampler.server import metrics  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "sampler.exporters.queue -> sampler.server.metrics" in result.stdout
