"""What the node modules use to reach ComfyUI, one job per module: ``node_api`` (the pinned V3 node API),
``host_internals`` (every other comfy internal, behind a feature check naming the supported versions),
``comfy_backend`` (the method's Backend on the host's MODEL, CLIP and VAE), ``autograd`` (gradients inside the
host: inference mode off, no-copy trainable aliases, checkpointing), ``tokenizer_hook`` (the host's tokenizer
taught a class token in memory), ``model_folders`` (models/classifiers and models/embeddings),
``labels_route`` (the class picker's HTTP route), ``settings_widgets`` (the engine's settings table as widgets),
``sockets`` and ``images``. The node modules (one level up) hold node schemas and bodies only."""
