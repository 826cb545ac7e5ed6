"""The house rules: light imports of the package root and the layers, which module may import
which (docs/architecture.md), no import of ``__version__`` from the package root, and optional
dependencies that fail with one line naming their extra."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "maxca"
HEAVY = (
    "SimpleITK",
    "nibabel",
    "monai",
    "yaml",
    "tqdm",
    "matplotlib",
    "nilearn",
    "scipy",
    "maxca.training",
    "maxca.training.trainer",
    "maxca.app",
    "maxca.inference",
    "maxca.data",
)


def _loaded(statement: str) -> tuple[list[str], list[str]]:
    """Heavy modules loaded by ``import torch`` alone and those ``statement`` adds after it."""
    code = (
        "import json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "import torch\n"
        "with_torch = [m for m in heavy if m in sys.modules]\n"
        f"{statement}\n"
        "added = [m for m in heavy if m in sys.modules and m not in with_torch]\n"
        "print(json.dumps([with_torch, added]))\n"
    )
    env_path = str(SRC.parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    return tuple(json.loads(out.stdout))  # type: ignore[return-value]


@pytest.mark.parametrize("statement", ["import maxca", "import maxca.layers", "import maxca.cli"])
def test_light_imports(statement):
    with_torch, added = _loaded(statement)
    assert added == []
    # the only heavy module allowed is one torch loads by itself (torch.hub imports tqdm)
    assert set(with_torch) <= {"tqdm"}


def _imports(path: Path) -> set[str]:
    """Absolute ``maxca...`` modules a source file imports (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "maxca" or n.startswith("maxca.")}


def _modules() -> dict[str, set[str]]:
    return {str(p.relative_to(SRC)): _imports(p) for p in sorted(SRC.rglob("*.py")) if p.is_file()}


def test_layering():
    """Only the CLI imports the app layer; only ``python -m maxca`` imports the CLI; inference
    never imports training; the layers/spatial/models floors import nothing above them."""
    below = {"layers", "spatial", "models", "losses", "metrics", "data", "inference", "viz"}
    bad = []
    for rel, imported in _modules().items():
        top = rel.split("/")[0]
        for name in imported:
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target == "cli" and rel != "__main__.py":
                bad.append((rel, name))
            if target == "app" and top not in ("app", "cli.py"):
                bad.append((rel, name))
            if top in below and target in ("app", "training"):
                bad.append((rel, name))
            if top in ("layers", "spatial", "models") and target in ("data", "inference", "viz"):
                bad.append((rel, name))
    assert bad == []


def test_no_version_from_the_package_root():
    offenders = []
    for p in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "maxca"
                and any(a.name == "__version__" for a in node.names)
            ):
                offenders.append(str(p.relative_to(SRC)))
    assert offenders == []


def test_missing_monai_names_the_hd95_extra(monkeypatch):
    from maxca.errors import MaxcaInputError, MissingDependencyError
    from maxca.metrics import hd95

    monkeypatch.setitem(sys.modules, "monai.metrics", None)  # import fails as if not installed
    a = np.zeros((6, 6), np.uint8)
    a[1:4, 1:4] = 1
    with pytest.raises(
        MissingDependencyError, match=r'HD95 needs MONAI.*pip install "maxca\[hd95\]"'
    ):
        hd95(a, a, [1], (1.0, 1.0))
    assert issubclass(MissingDependencyError, MaxcaInputError)
    assert issubclass(MissingDependencyError, ImportError)


def test_demo_without_nilearn_is_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from maxca import cli

    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--out", str(out), "--steps", "1", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert 'maxca demo needs nilearn, which is not installed: pip install "maxca[demo]"' in err
    assert not out.exists()
