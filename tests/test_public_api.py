"""The public surface: every exported name imports, exports are sorted, and importing stays light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import dynaloss

PUBLIC_MODULES = ["dynaloss", "dynaloss.teachers", "dynaloss.losses", "dynaloss.functional"]


def _core_modules() -> list[str]:
    """The public modules, the shared input checks and every module of the loss and teacher packages."""
    names = [*PUBLIC_MODULES, "dynaloss._checks"]
    for package in ("dynaloss.losses", "dynaloss.teachers"):
        path = importlib.import_module(package).__path__
        names += [info.name for info in pkgutil.iter_modules(path, prefix=f"{package}.")]
    return names


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 "isort-style" order: SCREAMING_CASE constants, then CamelCase classes, then the rest
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_imports(module_name):
    module = importlib.import_module(module_name)
    assert module.__all__, module_name
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{module_name}.{name}"
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(module.__all__) <= set(namespace)


@pytest.mark.parametrize("module_name", _core_modules())
def test_all_is_sorted_and_unique_and_resolves(module_name):
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.skip(f"{module_name} has no __all__")
    assert len(set(exported)) == len(exported), f"duplicates in {module_name}.__all__"
    assert list(exported) == sorted(exported, key=_isort_key), f"{module_name}.__all__ is not sorted"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names missing attributes: {missing}"


def test_top_level_exports_are_the_documented_ones():
    assert set(dynaloss.__all__) >= {
        "LSTMTeacher",
        "MultiPartDLN",
        "OptimizerTeacher",
        "PairwiseDLN",
        "Teacher",
        "TeacherModel",
        "hypergradient",
    }
    assert isinstance(dynaloss.__version__, str)


@pytest.mark.subprocess
def test_import_does_not_touch_optional_frameworks():
    # A meta-path finder records every attempt, so the test also bites when the packages are not installed.
    script = textwrap.dedent(
        """
        import sys

        HEAVY = ("ultralytics", "segmentation_models_pytorch", "torchvision")
        attempts = []

        class Recorder:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HEAVY:
                    attempts.append(name)
                return None

        sys.meta_path.insert(0, Recorder())
        import dynaloss
        import dynaloss.functional, dynaloss.losses, dynaloss.teachers, dynaloss.unroll, dynaloss.teacher
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        print(repr((attempts, loaded)))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    attempts, loaded = eval(result.stdout.strip().splitlines()[-1])
    assert attempts == [] and loaded == []
