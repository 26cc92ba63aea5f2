"""Run by ComfyUI-Manager after it installs requirements.txt (and by a webui when it installs the extension).

It only checks, never installs, and always exits 0: a missing package is something the user can fix later, so it
is one warning line (what is missing, what to run), never a failed install. torch and torchvision must come from
the host (its own CUDA build); this script says so if they are missing and never installs them.
"""

import importlib.util
import os
import sys

REQUIRED = ["torch", "torchvision", "diffusers", "transformers", "timm", "safetensors", "numpy", "PIL", "tqdm"]
HOST_OWNED = ("torch", "torchvision")
PIP_NAME = {"PIL": "pillow"}
TAG = "[discriminative-class-tokens]"


def missing_packages(names: list[str] = REQUIRED) -> list[str]:
    """Those of ``names`` (import names) that cannot be found; only looked up, never imported."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-imported package counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


def run_by_webui(environ=os.environ) -> bool:
    """Whether an Automatic1111-family webui runs this (its installer puts the webui's folder, holding launch.py and
    modules/, on PYTHONPATH)."""
    for entry in environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and os.path.isfile(os.path.join(entry, "launch.py")) and os.path.isdir(os.path.join(entry, "modules")):
            return True
    return False


def warning(missing: list[str], webui: bool = False) -> str:
    """One line: what is missing, what to run. In a webui, never requirements.txt: its pins (newer transformers)
    would upgrade the webui's own (transformers 4.30.2 in Forge Classic); only the missing packages, unpinned."""
    names = ", ".join(f"{name} ({PIP_NAME[name]})" if name in PIP_NAME else name for name in missing)
    host = "webui" if webui else "ComfyUI"
    todo = []
    if any(name in HOST_OWNED for name in missing):
        todo.append(f"install torch/torchvision the way your {host} was installed (its own build, never from here)")
    others = [PIP_NAME.get(name, name) for name in missing if name not in HOST_OWNED]
    if others and webui:
        todo.append(f'run: "{sys.executable}" -m pip install {" ".join(others)}')
    elif others:
        requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
        todo.append(f'run: "{sys.executable}" -m pip install -r "{requirements}"')
    what = "the Class Tokens tab and DATE script" if webui else "the nodes"
    return (f"{TAG} WARNING: missing Python packages: {names}; {what} will not load until they are installed. "
            f"To fix, {' and '.join(todo)}, then restart.")


def main() -> int:
    try:
        missing = missing_packages()
    except Exception as exc:  # whatever goes wrong here must not fail the install
        print(f"{TAG} WARNING: could not check the requirements ({exc}); continuing")
        return 0
    print(warning(missing, run_by_webui()) if missing else f"{TAG} all requirements present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
