"""ComfyUI glue (node schemas, the host backend). Filled by the ComfyUI nodes issue."""
