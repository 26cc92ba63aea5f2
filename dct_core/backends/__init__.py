"""Implementations of the method's Backend contract outside a host: Stable Diffusion 1.x / 2.x / SDXL on a
diffusers pipeline, loaded offline from a folder or a single-file checkpoint, and device/dtype choice. (The
ComfyUI backend lives with the host glue in ``nodes/``.)"""
