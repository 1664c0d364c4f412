"""Declared abilities: how a scene or a prior says what it can do beyond its base protocol (issue #14, step 3).

The abilities themselves are small ``typing.Protocol`` classes beside the protocol they extend (``renderers/base.py``
for scenes, ``guidance/priors/base.py`` for priors). A class *declares* an ability by subclassing it, so the check
is nominal: ``declares(obj, DensityField)`` is True only for an object whose class lists ``DensityField`` among its
bases, never because an object happens to carry a method of that name. Abstract methods in an ability make a class
that declares it without implementing it impossible to instantiate (TypeError at construction, not a silent stub).

The main paths check a declaration once, where the ability is needed, and name what is missing in one line
(``engine export --format ply`` on a NeRF run: "ply is the Gaussian-splat format; this run's scene (NeRF) has no
splats").
"""


def declares(obj: object, *abilities: type) -> bool:
    """Whether the class of ``obj`` declares every one of ``abilities`` (subclasses it): a nominal check."""
    mro = type(obj).__mro__
    return all(a in mro for a in abilities)


__all__ = ["declares"]
