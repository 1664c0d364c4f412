"""Score-distillation objectives behind one protocol, and their registry (keys are the CLI choices)."""

from guidance.asd import ASDConfig
from guidance.base import Guidance, GuidanceOutput
from guidance.csm import CSDConfig, CSMConfig
from guidance.elbo import ELBOConfig
from guidance.ism import ISMConfig, TSMConfig
from guidance.sds import SDSConfig
from guidance.vsd import VSDConfig

GUIDANCES: dict[str, type] = {
    "sds": SDSConfig,
    "vsd": VSDConfig,
    "ism": ISMConfig,
    "tsm": TSMConfig,
    "asd": ASDConfig,
    "csm": CSMConfig,
    "csd": CSDConfig,
    "elbo": ELBOConfig,
}

__all__ = ["GUIDANCES", "Guidance", "GuidanceOutput", "SDSConfig", "VSDConfig", "ISMConfig", "TSMConfig", "ASDConfig",
           "CSMConfig", "CSDConfig", "ELBOConfig"]
