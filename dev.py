#!/usr/bin/env python3
"""The README's two commands: set everything up, then run the demo or the tests.

    python3 dev.py demo [dct demo args]    # .venv, torch + torchvision, this package; then `dct demo`
    python3 dev.py test [pytest args]      # the same, plus the ComfyUI host's set-up when a host is found; then
                                           # ruff check . / mypy -p dct_core -p nodes -p dct_webui / pytest -q -rs
    python3 dev.py test --setup-only       # the set-up alone (demo too); `--` passes what follows to pytest/dct

Standard library only, any OS (Python 3.10+). Idempotent, and quick the second time: it reads what the virtual
environment holds (one call of the venv's Python) and calls pip only for what is missing; a torch already in .venv
is never replaced. Every step it takes is printed as one "[dev] ..." line. .ci/run is `python3 dev.py test`.
"""

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIN_PYTHON = (3, 10)


def python_too_old(version=None):
    """The one-line refusal for a Python older than MIN_PYTHON, else None. (No annotations: this runs, and this file
    must parse, on an old Python.)"""
    version = tuple(sys.version_info if version is None else version)
    if version[:2] >= MIN_PYTHON:
        return None
    have = ".".join(str(part) for part in version[:3])
    return (f"[dev] error: this needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer, and {sys.executable} is "
            f"Python {have}. Install a newer Python (python.org, your package manager, pyenv or uv) and run "
            f"`python3.{MIN_PYTHON[1]} dev.py ...` (or newer) instead.")


if __name__ == "__main__":
    _too_old = python_too_old()
    if _too_old:
        print(_too_old, file=sys.stderr)
        sys.exit(1)

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "dct-dev-stamp.json"  # pyproject.toml's hash at the last successful `pip install -e ".[test]"`
DIST = "discriminative-class-tokens"
# torch/torchvision from the package registry, as CI installs them (the default build; it also runs on CPU).
TORCH_PINS = {"x86_64": ("2.14.1", "0.29.1"), "aarch64": ("2.9.1", "0.24.1")}
FRONTEND = "1.58.1"  # comfyui-frontend-package the browser tests also run (tests/host/test_browser.py)
RUN_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
USAGE = """usage: python3 dev.py demo [--setup-only] [dct demo args]
       python3 dev.py test [--setup-only] [pytest args]

demo  sets up .venv (torch, torchvision, this package) and runs `dct demo`
test  the same set-up, plus the ComfyUI host's when one is found ($COMFYUI_PATH, else ~/comfy/ComfyUI), then
      ruff check . ; mypy -p dct_core -p nodes -p dct_webui ; python -m pytest -q -rs [pytest args]
--setup-only  stop after the set-up (only right after the command; `--` passes everything after it on)"""


class SetupError(Exception):
    """One line saying what failed and what to do; dev.py prints it and exits 1."""


def say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


# ---- pure decisions (tests/test_dev_script.py) -------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[str, bool, list[str]]:
    """(command, setup_only, passed-on args). Raises SystemExit(2) with the usage for anything else."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], list(argv[1:])
    if command not in ("demo", "test"):
        print(f"[dev] unknown command {command!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    setup_only = False
    while rest and rest[0] in ("--setup-only", "--"):
        if rest.pop(0) == "--":
            break
        setup_only = True
    return command, setup_only, rest


def torch_pins(machine: str | None = None, system: str | None = None) -> tuple[str, str]:
    """(torch, torchvision) versions for this machine: the aarch64 pair on Linux ARM, the x86_64 pair elsewhere."""
    machine = (machine if machine is not None else platform.machine()).lower()
    system = system if system is not None else platform.system()
    if machine in ("aarch64", "arm64") and system == "Linux":
        return TORCH_PINS["aarch64"]
    return TORCH_PINS["x86_64"]


def venv_bin(venv: Path, name: str, windows: bool | None = None) -> Path:
    """A program in the venv: bin/<name> on POSIX, Scripts\\<name>.exe on Windows."""
    if os.name == "nt" if windows is None else windows:
        return venv / "Scripts" / f"{name}.exe"
    return venv / "bin" / name


def torch_step(versions: dict, pins: tuple[str, str]) -> tuple[list[str], list[str], str]:
    """(messages, pip requirements to install, torch constraint) from the installed torch/torchvision versions.

    A torch already there is kept, whatever its version: the constraint pins it for every later pip call."""
    torch, vision = versions.get("torch"), versions.get("torchvision")
    if torch is None:
        return [], [f"torch=={pins[0]}", f"torchvision=={pins[1]}"], f"torch=={pins[0]}"
    note = "" if torch.split("+")[0] == pins[0] else f" (CI pins {pins[0]})"
    messages = [f"torch {torch} already installed{note}: kept"]
    if vision is None:  # the pinned pair when torch is the pin, else whatever torchvision matches this torch
        return messages, [f"torchvision=={pins[1]}" if torch.split("+")[0] == pins[0] else "torchvision"], \
            f"torch=={torch}"
    return messages + [f"torchvision {vision} already installed: kept"], [], f"torch=={torch}"


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_stamp(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def package_install_reason(stamp: dict | None, pyproject_hash: str, package: dict, root: Path) -> str | None:
    """Why `pip install -e ".[test]"` must run, or None when this package is installed, editable, from this
    folder, with every dependency (test extra included) present, and pyproject.toml unchanged since the stamp."""
    if not package.get("version"):
        return "not installed yet"
    location = package.get("editable_path")
    if not location or not _same_path(location, root):
        return f"installed from {location or 'a copy'}, not editable from {root}"
    if package.get("unmet"):
        return "missing " + ", ".join(package["unmet"])
    if not stamp or stamp.get("pyproject") != pyproject_hash:
        return "pyproject.toml changed since the last install" if stamp else "no record of the last install"
    return None


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.normcase(str(Path(a).resolve())) == os.path.normcase(str(Path(b).resolve()))
    except OSError:
        return False


_HOST_OWNED = re.compile(r"^(torch|torchvision|torchaudio)\s*([<>=!~;\[].*)?$", re.IGNORECASE)


def host_requirements(text: str) -> list[str]:
    """The ComfyUI host's requirements.txt less torch/torchvision/torchaudio (the venv's own torch stays), comments
    and pip options, plus what tests/host needs on top: requests and playwright."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line and not line.startswith("-") and not _HOST_OWNED.match(line):
            out.append(line)
    return out + ["requests", "playwright"]


def find_host(env: dict, home: Path) -> Path | None:
    """The ComfyUI the host tests run against: $COMFYUI_PATH, else comfy-cli's ~/comfy/ComfyUI (as tests/host)."""
    for candidate in (env.get("COMFYUI_PATH"), str(home / "comfy" / "ComfyUI")):
        if candidate and (Path(candidate) / "comfy" / "sd.py").is_file() \
                and (Path(candidate) / "requirements.txt").is_file():
            return Path(candidate)
    return None


def venv_missing_message(version: tuple = tuple(sys.version_info[:2]), detail: str = "") -> str:
    why = f" ({detail})" if detail else ""
    return (f"could not create .venv: Python's venv/ensurepip is missing{why}. On Debian/Ubuntu: sudo apt install "
            f"python3-venv (or python{version[0]}.{version[1]}-venv); elsewhere install Python from python.org. "
            f"Then rerun.")


def pip_failed_message(what: str, rc: int, command: str) -> str:
    return (f"pip could not install {what} (exit {rc}; pip's own error is above). Is the package registry reachable? "
            f"Check the network, a proxy (HTTPS_PROXY) or PIP_INDEX_URL, then rerun: python3 dev.py {command}")


# ---- the venv ----------------------------------------------------------------------------------------------------

# Run by the venv's Python (-I: no cwd, no PYTHON* variables): what is installed, by metadata only (nothing imported).
PROBE = r"""
import importlib.util, json, sys
from importlib import metadata
from urllib.parse import urlparse
from urllib.request import url2pathname
try:
    from packaging.requirements import Requirement
except ImportError:
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        Requirement = None
ask = json.load(sys.stdin)

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

def unmet(reqs, extra=""):
    bad = []
    for text in reqs:
        if Requirement is None:
            name, spec, marker = text.split(";")[0].split("[")[0].strip(), None, None
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
        else:
            try:
                req = Requirement(text)
            except Exception:
                continue
            name, spec, marker = req.name, req.specifier, req.marker
        if marker is not None and not marker.evaluate({"extra": extra}):
            continue
        have = version(name)
        if have is None or (spec and not spec.contains(have, prereleases=True)):
            bad.append(text)
    return bad

out = {"python": list(sys.version_info[:3]), "pip": importlib.util.find_spec("pip") is not None,
       "versions": {name: version(name) for name in ask["versions"]}, "package": {},
       "unmet": {key: unmet(reqs) for key, reqs in ask["unmet"].items()}}
have = version(ask["dist"])
if have:
    dist = metadata.distribution(ask["dist"])
    path = None
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}")
        if url.get("dir_info", {}).get("editable") and url.get("url", "").startswith("file:"):
            path = url2pathname(urlparse(url["url"]).path)
    except ValueError:
        pass
    out["package"] = {"version": have, "editable_path": path, "unmet": unmet(dist.requires or [], "test")}
print(json.dumps(out))
"""


def probe(python: Path, ask: dict) -> dict:
    try:
        done = subprocess.run([str(python), "-I", "-c", PROBE], input=json.dumps(ask), capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f".venv's Python does not run ({exc}): delete the .venv folder and rerun") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f".venv's Python failed to list its packages ({tail}): delete the .venv folder and rerun")
    return json.loads(done.stdout)


def ensure_venv() -> Path:
    python = venv_bin(VENV, "python")
    if python.exists():
        say(".venv found: kept")
        return python
    try:
        import ensurepip  # noqa: F401  (Debian/Ubuntu ship these apart, in python3-venv)
        import venv
    except ImportError as exc:
        raise SetupError(venv_missing_message(detail=str(exc))) from exc
    say(f"creating .venv (Python {platform.python_version()}, {sys.executable})")
    fresh = not VENV.exists()
    try:
        venv.EnvBuilder(with_pip=True, symlinks=os.name != "nt").create(str(VENV))
    except (subprocess.CalledProcessError, OSError) as exc:
        if fresh:  # a half-made venv (Debian: no pip) would fool the next run
            shutil.rmtree(VENV, ignore_errors=True)
        raise SetupError(venv_missing_message(detail=str(exc))) from exc
    if not python.exists():
        raise SetupError(f"created .venv but {python} is not there: delete the .venv folder and rerun")
    return python


def pip_install(python: Path, args: list[str], what: str, command: str, env: dict, constraint: str | None = None,
                quiet: bool = True, fatal: bool = True) -> bool:
    say("pip install " + " ".join(args))
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        if constraint:  # the torch in .venv: no pip call may replace it
            path = Path(tmp) / "keep-torch.txt"
            path.write_text(constraint + "\n")
            extra = ["-c", str(path)]
        cmd = [str(python), "-m", "pip", "install", *(["-q"] if quiet else []), *extra, *args]
        start = time.monotonic()
        try:
            rc = subprocess.call(cmd, cwd=ROOT, env=env)
        except OSError as exc:
            rc = 127
            print(exc, file=sys.stderr)
    say(f"pip {'done' if rc == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    if rc != 0:
        if fatal:
            raise SetupError(pip_failed_message(what, rc, command))
        return False
    return True


def setup(command: str, env: dict) -> dict:
    """Everything the command needs; returns the variables its run needs on top of `env` (COMFYUI_PATH)."""
    start = time.monotonic()
    say(f"Python {platform.python_version()} ({sys.executable}); project {ROOT}")
    python = ensure_venv()
    host = find_host(os.environ, Path.home()) if command == "test" else None
    host_reqs = host_requirements((host / "requirements.txt").read_text(errors="replace")) if host else []
    ask = {"versions": ["torch", "torchvision"], "dist": DIST, "unmet": {"host": host_reqs}}
    info = probe(python, ask)
    if tuple(info["python"][:2]) < MIN_PYTHON:
        have = ".".join(map(str, info["python"]))
        raise SetupError(f".venv holds Python {have}, older than 3.10: delete the .venv folder and rerun")
    if not info["pip"]:
        say(".venv has no pip: python -m ensurepip")
        if subprocess.call([str(python), "-m", "ensurepip", "--upgrade", "--default-pip"], env=env) != 0:
            raise SetupError(venv_missing_message(detail="ensurepip failed in .venv"))
    installed = False

    pins = torch_pins()
    messages, torch_reqs, constraint = torch_step(info["versions"], pins)
    for message in messages:
        say(message)
    if torch_reqs:
        say(f"installing {' '.join(torch_reqs)} from the package registry ({platform.machine()}; the default build, "
            "which also runs on CPU). The first time this downloads a few GB: minutes")
        keep = constraint if info["versions"].get("torch") else None  # torch there: only torchvision comes
        pip_install(python, torch_reqs, " ".join(torch_reqs), command, env, keep, quiet=False)
        installed = True

    pyproject_hash = file_hash(ROOT / "pyproject.toml")
    reason = package_install_reason(read_stamp(STAMP), pyproject_hash, info["package"], ROOT)
    if reason:
        say(f'installing this package: pip install -e ".[test]" ({reason})')
        pip_install(python, ["-e", ".[test]"], f"this package ({DIST}) and its test tools", command, env, constraint)
        STAMP.write_text(json.dumps({"pyproject": pyproject_hash}) + "\n")
        installed = True
    else:
        say(f"{DIST} {info['package']['version']} already installed (editable, pyproject.toml unchanged): kept")

    extra_env: dict = {}
    if command == "test":
        host_unmet = info["unmet"]["host"]
        if host_unmet and installed:  # what the steps above installed may already cover some of them
            host_unmet = probe(python, ask)["unmet"]["host"]
        installed |= setup_host(python, host, host_unmet, command, env, constraint, extra_env)

    if installed:  # what pip did, checked the same way the next run will check it
        after = probe(python, ask)
        still = after["unmet"]["host"] + after["package"].get("unmet", [])
        if not after["versions"].get("torch") or not after["package"].get("version") or still:
            raise SetupError(f"pip finished but these are still missing: {', '.join(still) or 'torch or ' + DIST}; "
                             "see pip's output above, fix it, then rerun")
    else:
        say("nothing to install: pip not called")
    say(f"set-up done in {time.monotonic() - start:.1f} s")
    return extra_env


def setup_host(python: Path, host: Path | None, unmet: list[str], command: str, env: dict, constraint: str,
               extra_env: dict) -> bool:
    """tests/host's set-up when a ComfyUI is found: its requirements (not torch*), requests, playwright, a system
    Chromium, comfyui-frontend-package FRONTEND in .ci-frontend/. Returns whether pip installed anything."""
    if host is None:
        say("ComfyUI host NOT found (set COMFYUI_PATH or install it at ~/comfy/ComfyUI): tests/host will be SKIPPED")
        return False
    installed = False
    say(f"ComfyUI host found at {host}")
    if unmet:
        say(f"installing the host's requirements (not torch) for tests/host: {len(unmet)} missing")
        pip_install(python, unmet, f"the requirements of the ComfyUI host at {host}", command, env, constraint)
        installed = True
    else:
        say("the host's requirements (not torch), requests and playwright already installed: kept")

    chromium = shutil.which("chromium")
    if chromium:
        say(f"Chromium found at {chromium}: kept")
    elif sys.platform.startswith("linux") and shutil.which("apt-get") and getattr(os, "geteuid", lambda: 1)() == 0:
        say("installing Chromium: apt-get install chromium")
        try:
            ok = subprocess.call(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL) == 0 and subprocess.call(
                ["apt-get", "install", "-y", "-qq", "chromium"], stdout=subprocess.DEVNULL) == 0
        except OSError:
            ok = False
        if not ok:
            say("Chromium could not be installed (apt-get failed): tests/host/test_browser.py will be SKIPPED")
    else:
        say("no system Chromium (install it: sudo apt-get install chromium): tests/host/test_browser.py will be "
            "SKIPPED")

    target = ROOT / ".ci-frontend" / FRONTEND
    if (target / "comfyui_frontend_package" / "static" / "index.html").is_file():
        say(f"comfyui-frontend-package {FRONTEND} found in .ci-frontend/{FRONTEND}: kept")
    else:
        say(f"installing comfyui-frontend-package {FRONTEND} into .ci-frontend/{FRONTEND} (beside the host's own)")
        if not pip_install(python, ["--no-deps", "--target", str(target), f"comfyui-frontend-package=={FRONTEND}"],
                           "", command, env, fatal=False):
            say(f"comfyui-frontend-package {FRONTEND} could not be installed: its browser tests will be SKIPPED")
    extra_env["COMFYUI_PATH"] = str(host)
    say(f"COMFYUI_PATH={host}")
    return installed


# ---- the commands ------------------------------------------------------------------------------------------------


def run_env(extra: dict | None = None) -> dict:
    """This process's environment with RUN_ENV and the venv first on PATH (what activating it would do)."""
    env = dict(os.environ, **RUN_ENV, **(extra or {}))
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = str(venv_bin(VENV, "python").parent) + os.pathsep + env.get("PATH", "")
    return env


def run_commands(command: str, args: list[str], env: dict) -> int:
    python = str(venv_bin(VENV, "python"))
    if command == "demo":
        dct = venv_bin(VENV, "dct")
        steps = [("dct demo", [str(dct)] if dct.exists() else [python, "-m", "dct_core"])]
        steps[0][1].extend(["demo", *args])
        cwd = Path.cwd()
    else:
        steps = [("ruff check .", [python, "-m", "ruff", "check", "."]),
                 ("mypy -p dct_core -p nodes -p dct_webui",
                  [python, "-m", "mypy", "-p", "dct_core", "-p", "nodes", "-p", "dct_webui"]),
                 ("python -m pytest -q -rs" + "".join(f" {a}" for a in args),
                  [python, "-m", "pytest", "-q", "-rs", *args])]
        cwd = ROOT
    for name, cmd in steps:
        say(f"running: {name}")
        rc = subprocess.call(cmd, cwd=cwd, env=env)
        if rc != 0:
            say(f"{name} failed (exit {rc})")
            return rc
    return 0


def main(argv: list[str]) -> int:
    command, setup_only, args = parse_args(argv)
    env = run_env()
    try:
        env.update(setup(command, env))
    except SetupError as exc:
        print(f"[dev] error: {exc}", file=sys.stderr)
        return 1
    if setup_only:
        return 0
    return run_commands(command, args, env)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("[dev] interrupted", file=sys.stderr)
        sys.exit(130)
