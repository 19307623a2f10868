"""Imports flow one way (docs/ARCHITECTURE.md): a lower layer never imports a higher one."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package prefix -> project prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # the installed package never imports a repo-root shim (finetune/, arguments.py, pretrain_gpt2.py)
    "megatron_cogview": ("finetune", "arguments", "pretrain_gpt2"),
    "megatron_cogview.config": ("megatron_cogview.", "tokenization", "data_utils", "deepspeed", "webdataset"),
    "megatron_cogview.parallel": (
        "megatron_cogview.model", "megatron_cogview.training", "megatron_cogview.generation",
        "megatron_cogview.cli", "megatron_cogview.commands", "megatron_cogview.finetune", "tokenization", "data_utils",
    ),
    "megatron_cogview.model": (
        "megatron_cogview.training", "megatron_cogview.generation", "megatron_cogview.cli",
        "megatron_cogview.commands", "megatron_cogview.finetune", "tokenization", "data_utils",
    ),
    "megatron_cogview.training": (
        "megatron_cogview.generation", "megatron_cogview.cli", "megatron_cogview.finetune", "tokenization", "data_utils",
    ),
    "megatron_cogview.generation": (
        "megatron_cogview.training", "megatron_cogview.cli", "megatron_cogview.finetune", "tokenization", "data_utils",
    ),
    "megatron_cogview.evaluation": (
        "megatron_cogview.training", "megatron_cogview.cli", "megatron_cogview.commands", "megatron_cogview.demo",
        "megatron_cogview.finetune",
    ),
    "megatron_cogview.serve": (
        "megatron_cogview.training", "megatron_cogview.cli", "megatron_cogview.commands", "megatron_cogview.demo",
        "megatron_cogview.finetune",
    ),
    # fine-tuning tasks sit on the pre-training entry; the CLI and the demo run them as subprocess modules
    "megatron_cogview.finetune": ("megatron_cogview.cli", "megatron_cogview.demo", "megatron_cogview.serve"),
    "tokenization": ("megatron_cogview", "data_utils", "finetune", "arguments", "pretrain_gpt2"),
    "data_utils": ("megatron_cogview", "finetune", "arguments", "pretrain_gpt2"),
}
# third-party modules allowed in exactly one project module each
SINGLE_IMPORTERS = ("deepspeed", "webdataset")
# the shared leaves (user-error base class, exit-2 wrapper; flags generated from dataclasses): every layer may
# import them; they import only the stdlib
SHARED_LEAVES = ("megatron_cogview.errors", "megatron_cogview.dataclass_flags")


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_files(root: Path = ROOT) -> list[Path]:
    files = []
    for top in ("megatron_cogview", "tokenization", "data_utils", "finetune"):
        files += sorted((root / top).rglob("*.py"))
    files += [p for p in (root / "arguments.py", root / "pretrain_gpt2.py") if p.exists()]
    return files


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in project_files(root):
        mod = module_name(path, root)
        for layer, banned in FORBIDDEN.items():
            if mod != layer and not mod.startswith(layer + "."):
                continue
            for name in imported_modules(path):
                if any(name == leaf or name.startswith(leaf + ".") for leaf in SHARED_LEAVES):
                    continue
                for prefix in banned:
                    if name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".") or name == prefix:
                        found.append(f"{mod} imports {name} (layer {layer} must not import {prefix})")
    return found


def test_no_upward_imports() -> None:
    assert violations() == []


@pytest.mark.parametrize("lib", SINGLE_IMPORTERS)
def test_heavy_third_party_imported_in_one_module(lib: str) -> None:
    users = [module_name(p) for p in project_files() if any(n == lib or n.startswith(lib + ".") for n in imported_modules(p))]
    assert len(users) <= 1, f"{lib} is imported by {users}; route it through one module"


@pytest.mark.parametrize("name", SHARED_LEAVES)
def test_shared_leaf_imports_only_the_standard_library(name: str) -> None:
    leaf = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    package_init = leaf.parent / "__init__.py"  # importing the leaf runs its package's __init__ too
    for path in (leaf, package_init):
        outside = {n.split(".")[0] for n in imported_modules(path)} - set(sys.stdlib_module_names)
        assert not outside, f"{path.name} imports {sorted(outside)}; the shared leaf must stay dependency-free"


def test_installed_package_needs_no_repo_root_shim() -> None:
    """finetune/ is a repo-root shim package (`python -m finetune.NAME`): setup.py does not install it, and the
    package never names one of its modules in a string (e.g. the module a demo stage runs), so an installed
    package works without the repository root on sys.path."""
    setup = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    include = next(ast.literal_eval(k.value) for node in ast.walk(setup) if isinstance(node, ast.Call)
                   and getattr(node.func, "id", "") == "find_packages" for k in node.keywords if k.arg == "include")
    assert "megatron_cogview*" in include and not [p for p in include if p.startswith("finetune")]
    named = [f"{path.relative_to(ROOT)}: {node.value!r}" for path in sorted((ROOT / "megatron_cogview").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"finetune(\.\w+)+", node.value)]
    assert named == []


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    # a probe tree in a temporary folder (never a file in the checkout): one upward import, one allowed
    (tmp_path / "tokenization").mkdir()
    (tmp_path / "tokenization" / "probe.py").write_text("import megatron_cogview.config\n")
    (tmp_path / "data_utils").mkdir()
    (tmp_path / "data_utils" / "ok.py").write_text("from tokenization.layout import TokenLayout\n")
    assert violations(tmp_path) == [
        "tokenization.probe imports megatron_cogview.config (layer tokenization must not import megatron_cogview)"
    ]
