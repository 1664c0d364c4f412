"""Distillery's engine: configuration, cameras, the training loop, outputs and the `engine` command.

Public API: ``generate(cfg) -> run folder``, ``GenerateConfig``, ``PRESETS``.
"""


def __getattr__(name):  # lazy, so that `import engine.cameras` stays light and free of import cycles
    if name == "generate":
        from engine.train import generate
        return generate
    if name in ("GenerateConfig", "PRESETS"):
        from engine import config
        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["generate", "GenerateConfig", "PRESETS"]
