"""ComfyUI entry point of the Discriminative Class Tokens pack.

The engine is the plain package dct_core (no ComfyUI import); the node glue arrives in nodes/.
"""

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
