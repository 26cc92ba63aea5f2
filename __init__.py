"""ComfyUI entry point of the Discriminative Class Tokens pack.

The engine is the plain package dct_core (no ComfyUI import); the node glue is in nodes/. Only the V3
entry point is exported: a module that also exported NODE_CLASS_MAPPINGS would have it ignored.
"""

import os
import sys

# Make `dct_core` importable. The pack folder goes at the END of sys.path: at the front, our `nodes/`
# package would shadow the host's own `nodes` module.
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

WEB_DIRECTORY = "./web"
__all__ = ["WEB_DIRECTORY"]

if __package__:  # imported by the host as a package (not as a loose module, e.g. by pytest's rootdir scan)
    from .nodes import comfy_entrypoint  # noqa: E402, F401

    __all__.append("comfy_entrypoint")
