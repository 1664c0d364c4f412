"""Distillery's ground floor: the vocabulary every layer shares, importing nothing of ours.

- ``cameras``: camera rigs and samplers (OpenGL c2w, Y-up metres) and the turntable.
- ``shapes``: the shapes world (coloured primitives with exact SDFs and ground-truth renders).
- ``materials``: the tileable materials world (its ground truth and its tangent-space normal convention).
- ``meshio``: reading a user's mesh (folder-confined companion files, repairs, normalisation).
- ``device``: host-to-device copies that do not sync.
- ``abilities``: ``declares``, the nominal check of the abilities scenes and priors declare.
"""
