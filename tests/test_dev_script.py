"""dev.py's decisions (the README's two commands), without running pip or creating a venv: the torch pins by
machine, that a torch already installed is kept, when the package needs `pip install -e`, what the host set-up
installs, the argument handling, and the one-line refusals."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
dev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dev)

HASH = "a" * 64
INSTALLED = {"version": "0.1.0", "editable_path": str(ROOT), "unmet": []}


@pytest.mark.parametrize("machine, system, torch", [
    ("x86_64", "Linux", "2.14.1"), ("AMD64", "Windows", "2.14.1"), ("aarch64", "Linux", "2.9.1"),
    ("arm64", "Linux", "2.9.1"), ("arm64", "Darwin", "2.14.1"),
])
def test_torch_pins_by_machine(machine, system, torch):
    pins = dev.torch_pins(machine, system)
    assert pins[0] == torch
    assert pins == {"2.14.1": ("2.14.1", "0.29.1"), "2.9.1": ("2.9.1", "0.24.1")}[torch]


def test_no_torch_installs_the_pinned_pair():
    messages, reqs, constraint = dev.torch_step({"torch": None, "torchvision": None}, ("2.14.1", "0.29.1"))
    assert reqs == ["torch==2.14.1", "torchvision==0.29.1"] and constraint == "torch==2.14.1" and not messages


@pytest.mark.parametrize("torch", ["2.14.1", "2.13.0+cpu", "2.4.0"])
def test_a_torch_already_installed_is_kept_whatever_its_version(torch):
    messages, reqs, constraint = dev.torch_step({"torch": torch, "torchvision": "0.1"}, ("2.14.1", "0.29.1"))
    assert reqs == [] and constraint == f"torch=={torch}"  # the constraint holds it for every later pip call
    assert messages[0].startswith(f"torch {torch} already installed") and messages[0].endswith(": kept")
    # torchvision missing: the one matching this torch, never a torch change
    _, reqs, constraint = dev.torch_step({"torch": torch, "torchvision": None}, ("2.14.1", "0.29.1"))
    assert not [r for r in reqs if r.startswith("torch=") or r == "torch"] and constraint == f"torch=={torch}"
    assert reqs == (["torchvision==0.29.1"] if torch == "2.14.1" else ["torchvision"])


def test_package_install_is_skipped_only_when_installed_here_and_pyproject_unchanged():
    assert dev.package_install_reason({"pyproject": HASH}, HASH, INSTALLED, ROOT) is None
    assert "changed" in dev.package_install_reason({"pyproject": "b" * 64}, HASH, INSTALLED, ROOT)
    assert "no record" in dev.package_install_reason(None, HASH, INSTALLED, ROOT)
    assert "not installed" in dev.package_install_reason({"pyproject": HASH}, HASH, {}, ROOT)
    assert "missing pytest>=8" in dev.package_install_reason({"pyproject": HASH}, HASH,
                                                             dict(INSTALLED, unmet=["pytest>=8"]), ROOT)
    elsewhere = dict(INSTALLED, editable_path="/somewhere/else")
    assert "not editable from" in dev.package_install_reason({"pyproject": HASH}, HASH, elsewhere, ROOT)
    assert "not editable from" in dev.package_install_reason({"pyproject": HASH}, HASH,
                                                             dict(INSTALLED, editable_path=None), ROOT)


def test_the_stamp_round_trips_and_a_damaged_one_means_reinstall(tmp_path):
    stamp = tmp_path / "stamp.json"
    assert dev.read_stamp(stamp) is None
    stamp.write_text("{not json")
    assert dev.read_stamp(stamp) is None
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[project]\n")
    stamp.write_text(f'{{"pyproject": "{dev.file_hash(pyproject)}"}}')
    assert dev.package_install_reason(dev.read_stamp(stamp), dev.file_hash(pyproject), INSTALLED, ROOT) is None


def test_host_requirements_drop_torch_comments_and_options_and_add_the_test_tools():
    text = ("comfyui-frontend-package==1.27.10\ntorch\ntorchvision>=0.20\nTorchAudio\ntorchsde\n"
            "numpy>=1.25.0  # pinned\n\n#non essential dependencies:\n--extra-index-url https://x\nkornia>=0.7.1\n")
    assert dev.host_requirements(text) == ["comfyui-frontend-package==1.27.10", "torchsde", "numpy>=1.25.0",
                                           "kornia>=0.7.1", "requests", "playwright"]


def test_find_host_needs_comfy_sd_py(tmp_path):
    host = tmp_path / "ComfyUI"
    (host / "comfy").mkdir(parents=True)
    (host / "requirements.txt").write_text("torch\n")
    assert dev.find_host({"COMFYUI_PATH": str(host)}, tmp_path / "nohome") is None
    (host / "comfy" / "sd.py").write_text("")
    assert dev.find_host({"COMFYUI_PATH": str(host)}, tmp_path / "nohome") == host
    home = tmp_path / "home"
    (home / "comfy").mkdir(parents=True)
    host.rename(home / "comfy" / "ComfyUI")
    assert dev.find_host({}, home) == home / "comfy" / "ComfyUI"


def test_venv_programs_on_posix_and_windows():
    venv = Path("/p/.venv")
    assert dev.venv_bin(venv, "python", windows=False) == venv / "bin" / "python"
    assert dev.venv_bin(venv, "dct", windows=True) == venv / "Scripts" / "dct.exe"


@pytest.mark.parametrize("argv, expected", [
    (["demo"], ("demo", False, [])),
    (["demo", "--steps", "3"], ("demo", False, ["--steps", "3"])),
    (["test", "tests/test_cli.py", "-x"], ("test", False, ["tests/test_cli.py", "-x"])),
    (["test", "--setup-only"], ("test", True, [])),
    (["test", "--", "--setup-only"], ("test", False, ["--setup-only"])),  # pytest's own --setup-only
    (["test", "-k", "x", "--setup-only"], ("test", False, ["-k", "x", "--setup-only"])),
])
def test_arguments(argv, expected):
    assert dev.parse_args(argv) == expected


@pytest.mark.parametrize("argv", [[], ["tests"], ["--setup-only"]])
def test_bad_arguments_print_the_usage_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        dev.parse_args(argv)
    assert exc.value.code == 2 and "python3 dev.py test" in capsys.readouterr().err


def test_python_older_than_3_10_is_one_clear_line():
    assert dev.python_too_old((3, 10, 0)) is None and dev.python_too_old((3, 13, 1)) is None
    message = dev.python_too_old((3, 9, 18))
    assert "3.10 or newer" in message and "Python 3.9.18" in message and "\n" not in message


def test_an_old_python_is_refused_before_anything_runs():
    script = ("import runpy, sys; sys.version_info = (3, 8, 10, 'final', 0); sys.argv = ['dev.py', 'test']; "
              f"runpy.run_path({str(ROOT / 'dev.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [dev.python_too_old((3, 8, 10))]
    assert not done.stdout


def test_missing_venv_and_unreachable_registry_say_what_to_do():
    assert "apt install python3-venv" in dev.venv_missing_message((3, 11))
    assert "python3.11-venv" in dev.venv_missing_message((3, 11))
    message = dev.pip_failed_message("torch==2.14.1 torchvision==0.29.1", 1, "test")
    assert "torch==2.14.1" in message and "registry" in message and "python3 dev.py test" in message
    assert "\n" not in message


def test_a_satisfied_venv_needs_no_pip_call():
    """What the second run sees: nothing for pip to do anywhere."""
    _, torch_reqs, _ = dev.torch_step({"torch": "2.14.1", "torchvision": "0.29.1"}, dev.torch_pins())
    assert torch_reqs == []
    assert dev.package_install_reason({"pyproject": HASH}, HASH, INSTALLED, ROOT) is None


def test_the_probe_reads_this_environment_without_pip():
    """The one call the second run makes into the venv (here: the interpreter running the tests)."""
    info = dev.probe(Path(sys.executable), {"versions": ["torch", "surely-not-installed-x"], "dist": dev.DIST,
                                            "unmet": {"host": ["pytest>=1", "pytest<1", "surely-not-installed-x"]}})
    assert info["versions"]["torch"] and info["versions"]["surely-not-installed-x"] is None
    assert info["unmet"]["host"] == ["pytest<1", "surely-not-installed-x"]
    assert tuple(info["python"][:2]) == sys.version_info[:2]
