"""ComfyUI entry point of the Discriminative Class Tokens pack.

The engine is the plain package dct_core (no ComfyUI import); the node glue is in nodes/. Only the V3
entry point is exported: a module that also exported NODE_CLASS_MAPPINGS would have it ignored.

When a package the nodes need is missing, the import logs ONE line (what is missing, how to install it) and exports
an empty NODE_CLASS_MAPPINGS instead: no nodes, no traceback, and the host keeps starting.
"""

import logging
import os
import sys

# Make `dct_core` importable. The pack folder goes at the END of sys.path: at the front, our `nodes/`
# package would shadow the host's own `nodes` module.
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

if __package__:  # install.py's check, less the host's own torch/torchvision (ComfyUI would not start without them)
    from .install import HOST_OWNED, REQUIRED, missing_packages

    _missing = missing_packages([name for name in REQUIRED if name not in HOST_OWNED])
else:
    _missing = []
if _missing:
    logging.warning(
        "[discriminative-class-tokens] not loaded, missing Python packages: %s. Install them into ComfyUI's Python: "
        '"%s" -m pip install -r "%s", then restart ComfyUI.', ", ".join(_missing), sys.executable,
        os.path.join(_here, "requirements.txt"))
    NODE_CLASS_MAPPINGS: dict = {}  # loaded as a pack with no nodes (no web extension either)
    __all__ = ["NODE_CLASS_MAPPINGS"]
else:
    WEB_DIRECTORY = "./web"
    __all__ = ["WEB_DIRECTORY"]
    if __package__:  # imported by the host as a package (not as a loose module, e.g. by pytest's rootdir scan)
        from .nodes import comfy_entrypoint  # noqa: F401

        __all__.append("comfy_entrypoint")
