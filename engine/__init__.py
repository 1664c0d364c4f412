"""Distillery's engine: configuration, cameras, the training loop, outputs and the `engine` command.

Public API: ``generate(cfg) -> run folder``, ``GenerateConfig``, ``PRESETS``.
"""


# Loaded on first use (PEP 562), not for an import cycle (tests/test_layers.py shows there is none) but for speed:
# engine.train pulls in torch, the priors and the renderers (~4 s on a CPU), while `engine --help` and the
# command table (engine.cli) load in ~0.15 s without them.
def __getattr__(name):
    if name == "generate":
        from engine.train import generate
        return generate
    if name in ("GenerateConfig", "PRESETS"):
        from engine import config
        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["generate", "GenerateConfig", "PRESETS"]
