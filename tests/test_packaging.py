"""The install contract: the torch floor is the safe one, and README says what pyproject says."""

from __future__ import annotations

import re
import tomllib

from .conftest import ROOT


def _torch_range() -> tuple[tuple[int, int], tuple[int, int]]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"torch\b", d))
    lo = re.search(r">=\s*(\d+)\.(\d+)", spec)
    hi = re.search(r"<\s*(\d+)\.(\d+)", spec)
    assert lo and hi, spec
    return (int(lo[1]), int(lo[2])), (int(hi[1]), int(hi[2]))


def test_torch_floor_is_safe_for_weights_only_loading():
    (lo, _) = _torch_range()
    assert lo >= (2, 6), "torch.load(weights_only=True) is only safe from torch 2.6 (CVE-2025-32434)"


def test_readme_states_the_pyproject_torch_range():
    (lo, hi) = _torch_range()
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"Any torch from (\d+)\.(\d+) to (\d+)\.(\d+)", readme)
    assert m, "README must say which torch versions work"
    assert (int(m[1]), int(m[2])) == lo
    assert (int(m[3]), int(m[4]) + 1) == hi  # "to 2.14" = "<2.15"


def test_installed_torch_is_in_range():
    import torch

    (lo, hi) = _torch_range()
    v = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert lo <= v < hi


def test_no_advice_to_install_what_is_already_a_dependency():
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for path in (ROOT / "pathosam").rglob("*.py"):
        for m in re.finditer(r"pip install ([A-Za-z0-9_\- ]+)", path.read_text()):
            for package in m[1].split():
                assert not re.search(rf"(^|\s|\"){re.escape(package)}>=", deps), (
                    f"{path.name} tells users to pip install {package}, which is already a dependency")
