"""Run by ComfyUI-Manager after installing requirements.txt. Idempotent: it only checks, never installs.

torch and torchvision must come from the host (its CUDA build); this script says so if they are missing.
"""

import importlib.util
import sys

REQUIRED = ["torch", "torchvision", "diffusers", "transformers", "timm", "safetensors", "numpy", "PIL", "tqdm"]


def main() -> int:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"[discriminative-class-tokens] missing packages: {', '.join(missing)}. Install torch/torchvision "
              "the way your ComfyUI was installed, then: pip install -r requirements.txt", file=sys.stderr)
        return 1
    print("[discriminative-class-tokens] all requirements present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
