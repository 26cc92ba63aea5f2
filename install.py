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


def warning(missing: list[str]) -> str:
    """One line: what is missing, what to run."""
    names = ", ".join(f"{name} ({PIP_NAME[name]})" if name in PIP_NAME else name for name in missing)
    todo = []
    if any(name in HOST_OWNED for name in missing):
        todo.append("install torch/torchvision the way your ComfyUI was installed (its own build, never from here)")
    if any(name not in HOST_OWNED for name in missing):
        requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
        todo.append(f'run: "{sys.executable}" -m pip install -r "{requirements}"')
    return (f"{TAG} WARNING: missing Python packages: {names}; the nodes will not load until they are installed. "
            f"To fix, {' and '.join(todo)}, then restart.")


def main() -> int:
    try:
        missing = missing_packages()
    except Exception as exc:  # whatever goes wrong here must not fail the install
        print(f"{TAG} WARNING: could not check the requirements ({exc}); continuing")
        return 0
    print(warning(missing) if missing else f"{TAG} all requirements present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
