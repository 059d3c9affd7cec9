"""Workspace invariants: PEP 420 namespace, lockstep versions with exact sibling pins, and layering."""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ROOT / "packages"
# Each layer may import only itself and the layers before it.
LAYERS = ["kernels", "patch", "validate", "bench"]
THIRD_PARTY_BAN = {"kernels": {"mlx_lm", "msgspec", "rich"}, "patch": {"msgspec", "rich"}}


def _pyproject(name):
    return tomllib.loads((PACKAGES / name / "pyproject.toml").read_text())


def test_no_namespace_init_files():
    assert not list(PACKAGES.glob("*/src/zmlx/__init__.py"))


def test_root_is_a_virtual_workspace():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in root
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*"]


def test_one_version_and_exact_sibling_pins():
    names = ["zmlx", "zmlx-kernels", "zmlx-patch", "zmlx-validate", "zmlx-bench"]
    versions = {n: _pyproject(n)["project"]["version"] for n in names}
    assert len(set(versions.values())) == 1, versions
    version = versions["zmlx"]
    for n in names:
        project = _pyproject(n)["project"]
        deps = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            deps += extra
        for dep in deps:
            base = dep.split("[")[0].split("=")[0].split(">")[0].split(";")[0].strip()
            if base.startswith("zmlx"):
                assert f"=={version}" in dep, f"{n}: sibling dependency not pinned exactly: {dep}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_upward_imports(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    src = PACKAGES / f"zmlx-{layer}" / "src" / "zmlx" / layer
    offenders = []
    for py in src.rglob("*.py"):
        for mod in _imports(py):
            parts = mod.split(".")
            if parts[0] == "zmlx" and len(parts) > 1 and parts[1] in LAYERS and parts[1] not in allowed:
                offenders.append(f"{py.relative_to(ROOT)} imports {mod}")
            if parts[0] in THIRD_PARTY_BAN.get(layer, set()):
                offenders.append(f"{py.relative_to(ROOT)} imports {mod} (not a dependency of zmlx-{layer})")
    assert not offenders, "\n".join(offenders)


def test_layering_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from zmlx.bench import capsule\nimport zmlx.validate.record\n")
    assert {"zmlx.bench", "zmlx.validate.record"} <= _imports(bad)
