"""ComfyUI glue: node schemas (V3, pinned through host_api), the host backend, folders. The engine is dct_core."""

from __future__ import annotations


def comfy_entrypoint():
    """Called by the host after import; registering folders here keeps paths from extra_model_paths.yaml."""
    from .adaptive_node import AdaptiveClassGuidance
    from .classifier_node import LoadClassifier
    from .folders import register_classifier_folder
    from .host import log_missing
    from .host_api import ComfyExtension
    from .legacy_train_node import TrainClassToken
    from .routes import register_routes
    from .token_nodes import ApplyClassToken, ClassTokenClip, LoadClassToken, SaveClassToken
    from .train_node import TrainToken
    from .training_options import TrainingOptionsNode

    register_classifier_folder()
    register_routes()
    log_missing()  # a host whose internals moved: one log line now, a clear node error when a node needs them

    class DiscriminativeClassTokens(ComfyExtension):
        async def get_node_list(self):
            return [LoadClassifier, TrainToken, TrainingOptionsNode, ApplyClassToken, ClassTokenClip, LoadClassToken,
                    SaveClassToken, AdaptiveClassGuidance, TrainClassToken]  # the last: deprecated, old workflows

    return DiscriminativeClassTokens()
