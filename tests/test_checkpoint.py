import pytest
import torch

from engine.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint, step_path


def test_nested_state_roundtrip_with_optimizer(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1, "name": "x"}])
    p.grad = torch.ones_like(p)
    opt.step()
    gen = torch.Generator().manual_seed(5)
    state = {"step": 7, "opt": opt.state_dict(), "rng": gen.get_state(), "misc": {"a": [1, 2.5, None, "s"],
                                                                                    "t": (True, torch.ones(2))}}
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["step"] == 7
    assert back["misc"]["a"] == [1, 2.5, None, "s"] and back["misc"]["t"][0] is True
    assert isinstance(back["misc"]["t"], tuple)
    opt2 = torch.optim.Adam([{"params": [p], "lr": 0.5, "name": "x"}])
    opt2.load_state_dict(back["opt"])  # int keys survive
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    g2 = torch.Generator()
    g2.set_state(back["rng"])
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=gen))


def test_latest_and_prune(tmp_path):
    for s in (100, 200, 300):
        save_checkpoint(step_path(str(tmp_path), s), {"step": s})
    assert latest_checkpoint(str(tmp_path)).endswith("step_000300.safetensors")
    prune_checkpoints(str(tmp_path), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000200.safetensors", "step_000300.safetensors"]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        load_checkpoint(str(bad))
