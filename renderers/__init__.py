"""Differentiable renderers behind the Scene protocol, and their registry (keys are the CLI choices)."""

from renderers.base import Background, BackgroundConfig, RenderOutput, Scene
from renderers.gaussians import GaussiansConfig
from renderers.material import MaterialConfig
from renderers.mesh import MeshConfig
from renderers.nerf import NeRFConfig

RENDERERS: dict[str, type] = {
    "nerf": NeRFConfig,
    "gaussians": GaussiansConfig,
    "mesh": MeshConfig,
    "material": MaterialConfig,
}

__all__ = ["RENDERERS", "Background", "BackgroundConfig", "RenderOutput", "Scene", "NeRFConfig", "GaussiansConfig",
           "MeshConfig", "MaterialConfig"]
