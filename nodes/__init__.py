"""ComfyUI glue: node schemas (V3, pinned through host_api), the host backend, folders. The engine is dct_core."""

from __future__ import annotations


def comfy_entrypoint():
    """Called by the host after import; registering folders here keeps paths from extra_model_paths.yaml."""
    from .adaptive_node import AdaptiveClassGuidance
    from .classifier_node import LoadClassifier
    from .folders import register_classifier_folder
    from .host_api import ComfyExtension
    from .routes import register_routes
    from .token_nodes import ApplyClassToken, ClassTokenClip, LoadClassToken, SaveClassToken
    from .train_node import TrainClassToken

    register_classifier_folder()
    register_routes()

    class DiscriminativeClassTokens(ComfyExtension):
        async def get_node_list(self):
            return [LoadClassifier, TrainClassToken, ApplyClassToken, ClassTokenClip, LoadClassToken, SaveClassToken,
                    AdaptiveClassGuidance]

    return DiscriminativeClassTokens()
