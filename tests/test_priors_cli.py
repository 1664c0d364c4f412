"""Issue #8 end to end: every guidance objective runs 2 steps through `engine generate` on the tiny random SDXL and
DeepFloyd-IF folders (standard diffusers layout, written by diffusers' own save_pretrained), chosen by the folder's
model_index.json; TSM on SDXL with the Gaussian renderer is the Dreamer XL configuration."""

import json

import pytest
from tiny_models import tiny_if_path, tiny_sdxl_path

from engine.cli import main

GUIDANCES = ("sds", "vsd", "ism", "tsm", "asd", "csm", "csd", "elbo")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {"sdxl": tiny_sdxl_path(tmp_path_factory), "if": tiny_if_path(tmp_path_factory)}


def _run(tmp_path, prior, guidance, renderer="nerf"):
    out = tmp_path / f"{guidance}-{renderer}"
    assert main(["generate", "a red cube", "--prior", prior, "--guidance", guidance, "--renderer", renderer,
                 "--steps", "2", "--resolution", "32", "--out", str(out), "--train.no-progress",
                 "--train.video-frames", "0", "--train.no-export"]) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and all(v == v for r in rows for v in r.values() if isinstance(v, float))
    assert json.load(open(out / "status.json"))["state"] == "complete"


@pytest.mark.parametrize("kind", ["sdxl", "if"])
@pytest.mark.parametrize("guidance", GUIDANCES)
def test_every_guidance_two_steps(tmp_path, folders, kind, guidance):
    _run(tmp_path, folders[kind], guidance)


def test_dreamer_xl_configuration_tsm_sdxl_gaussians(tmp_path, folders):
    _run(tmp_path, folders["sdxl"], "tsm", "gaussians")
