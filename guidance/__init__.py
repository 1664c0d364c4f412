"""Score-distillation objectives behind one protocol, and their registry (keys are the CLI choices)."""

from guidance.base import Guidance, GuidanceOutput
from guidance.sds import SDSConfig

GUIDANCES: dict[str, type] = {
    "sds": SDSConfig,
}

__all__ = ["GUIDANCES", "Guidance", "GuidanceOutput", "SDSConfig"]
