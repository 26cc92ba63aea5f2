"""ComfyUI nodes: one module per node family (schemas and short bodies); what reaches the host is in adapters/. The
engine is dct_core."""

from __future__ import annotations


def comfy_entrypoint():
    """Called by the host after import; registering folders here keeps paths from extra_model_paths.yaml."""
    from .adapters.host_internals import log_missing
    from .adapters.labels_route import register_routes
    from .adapters.model_folders import register_classifier_folder
    from .adapters.node_api import ComfyExtension
    from .adaptive_node import AdaptiveClassGuidance
    from .classifier_node import LoadClassifier
    from .legacy_train_node import TrainClassToken
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
