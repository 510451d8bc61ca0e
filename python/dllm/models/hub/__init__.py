"""Published checkpoints (SEDD, MDLM, LLaDA, Dream) loaded into dllm's own model classes; one
file per family maps its config.json and weight names."""

from .layout import Layout
from .loader import LAYOUTS, detect_layout, load_published
from .published import PublishedModel

__all__ = ["LAYOUTS", "Layout", "PublishedModel", "detect_layout", "load_published"]
