"""A clean install everywhere (issue 20): install.py never fails an install over a package the user can add later,
the pack's import with a package missing is one log line and no nodes (never a traceback), and the packaging
metadata is what a registry and setuptools>=77 accept."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

# Runs install.py as the installer does (python install.py), with the named packages hidden: None in sys.modules
# makes importlib.util.find_spec return None and an import fail, as for a package that is not installed.
INSTALL = """
import runpy, sys
for name in sys.argv[1:]:
    sys.modules[name] = None
sys.argv = ["install.py"]
runpy.run_path({path!r}, run_name="__main__")
"""

# Imports the pack as ComfyUI does (a package named after its folder, from its __init__.py), packages hidden.
IMPORT_PACK = """
import importlib.util, json, sys
for name in sys.argv[1:]:
    sys.modules[name] = None
spec = importlib.util.spec_from_file_location("comfyui-dct", {path!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
print(json.dumps({{"nodes": getattr(pack, "NODE_CLASS_MAPPINGS", None), "entry": hasattr(pack, "comfy_entrypoint"),
                   "web": getattr(pack, "WEB_DIRECTORY", None)}}))
"""


def _run(script: str, *hidden: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *hidden], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def _install(*hidden: str) -> subprocess.CompletedProcess:
    return _run(INSTALL.format(path=str(ROOT / "install.py")), *hidden)


def _import_pack(*hidden: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = _run(IMPORT_PACK.format(path=str(ROOT / "__init__.py"), root=str(ROOT)), *hidden)
    assert done.returncode == 0, done.stderr
    return done, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("hidden", [("timm",), ("PIL", "diffusers")])
def test_install_py_warns_and_exits_0_when_a_package_is_missing(hidden):
    done = _install(*hidden)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "pip install -r" in lines[0] and "requirements.txt" in lines[0]
    for name in hidden:
        assert name in lines[0]
    assert "Traceback" not in done.stderr


def test_install_py_says_torch_comes_from_the_host():
    done = _install("torch")
    assert done.returncode == 0
    assert "torch" in done.stdout and "the way your ComfyUI was installed" in done.stdout
    assert "pip install -r" not in done.stdout  # nothing else is missing: no pip command for it


def test_install_py_is_quiet_and_exits_0_when_everything_is_there():
    done = _install()
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == ["[discriminative-class-tokens] all requirements present"]
    assert not done.stderr.strip()


@pytest.mark.parametrize("hidden", ["timm", "PIL", "diffusers", "transformers", "safetensors", "numpy"])
def test_the_pack_with_a_package_missing_logs_one_line_and_registers_no_nodes(hidden):
    done, pack = _import_pack(hidden)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert hidden in lines[0] and "pip install -r" in lines[0] and "requirements.txt" in lines[0]
    assert pack == {"nodes": {}, "entry": False, "web": None}  # ComfyUI loads it as a pack with no nodes


def test_the_pack_with_everything_there_exports_the_entry_point_and_logs_nothing():
    done, pack = _import_pack()
    assert not done.stderr.strip()
    assert pack == {"nodes": None, "entry": True, "web": "./web"}


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_is_mit_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 The Discriminative Class Tokens authors" in text
    assert _pyproject()["project"]["license"] == "MIT"


def test_pyproject_builds_with_setuptools_77_and_has_no_empty_registry_field():
    data = _pyproject()
    (requirement,) = [Requirement(r) for r in data["build-system"]["requires"]]
    assert requirement.name == "setuptools"
    assert requirement.specifier.contains("77.0.0") and not requirement.specifier.contains("76.1.0")
    classifiers = data["project"]["classifiers"]
    assert "Operating System :: OS Independent" in classifiers
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in classifiers
    assert any(c.startswith("Intended Audience ::") for c in classifiers)
    assert not [c for c in classifiers if c.startswith("License ::")]  # with an SPDX license: refused by >=77
    assert all(value != "" for value in data["tool"]["comfy"].values())


def test_setuptools_accepts_the_project_metadata():
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here; the build uses >=77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"
    assert "LICENSE" in dist.metadata.license_files
