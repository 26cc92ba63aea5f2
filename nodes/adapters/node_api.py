"""The host's node API, pinned to a numbered version (maintainers advise against ``latest``, whose contents move).

``comfy_api.v0_0_2`` re-exports ``io``, ``ui`` and ``ComfyExtension`` in ComfyUI 0.3.64 and in the 2026 hosts;
``latest`` is the fallback for a host that no longer ships it. Every node module imports from here.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

SUPPORTED_HOSTS = "ComfyUI 0.3.60 or newer (tested: 0.3.64; read against the 2026 cores up to 0.38.1)"

for _version in ("comfy_api.v0_0_2", "comfy_api.latest"):
    try:
        _api = importlib.import_module(_version)
        io, ui, ComfyExtension = _api.io, _api.ui, _api.ComfyExtension
        API_VERSION = _version
        break
    except (ImportError, AttributeError):
        continue
else:  # pragma: no cover - only on a host without the V3 node API
    raise ImportError(f"this ComfyUI has no comfy_api.v0_0_2 or comfy_api.latest node API; the Discriminative "
                      f"Class Tokens pack needs {SUPPORTED_HOSTS}.")



def schema_fields(**fields: Any) -> dict[str, Any]:
    """The optional ``io.Schema`` fields this host knows (e.g. ``is_deprecated`` since 0.3.6x, ``search_aliases``
    in 2026 hosts); the others are left out, so one schema works on old and new hosts alike."""
    known = inspect.signature(io.Schema).parameters
    return {name: value for name, value in fields.items() if name in known}


__all__ = ["API_VERSION", "ComfyExtension", "SUPPORTED_HOSTS", "io", "schema_fields", "ui"]
