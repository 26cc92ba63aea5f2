"""The pack's socket types and category."""

from comfy_api.latest import io

CATEGORY = "Discriminative Class Tokens"
Classifier = io.Custom("DCT_CLASSIFIER")
ClassToken = io.Custom("DCT_CLASS_TOKEN")
