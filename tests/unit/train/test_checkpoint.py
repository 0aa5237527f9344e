"""Foreign checkpoints: wrappers and DataParallel prefixes unwrapped, key maps, a one-sentence mismatch with a
--key-map example, and torch.load(weights_only=True) refusing a malicious pickle without running it."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from train.checkpoint import (apply_key_map, load_strict, parse_key_map, read_checkpoint, strip_prefixes,
                              suggest_key_map)
from train.errors import FerlensError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


class Evil:
    """Unpickling this would create ``marker`` — the proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("wrap", [lambda s: {"state_dict": s, "epoch": 3, "optimizer": {"lr": 0.1}},
                                  lambda s: {"model": s, "args_lr": 0.1},
                                  lambda s: {"model_state": s},
                                  lambda s: s])
def test_wrappers_and_dataparallel_prefix_unwrap(tmp_path, wrap):
    net = Net()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(nn.DataParallel(net).state_dict()), path)
    ck = read_checkpoint(path)
    state, stripped = strip_prefixes(ck.state, net.state_dict().keys())
    assert stripped == ["module."] and set(state) == set(net.state_dict())
    fresh = Net()
    load_strict(fresh, state, str(path))
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_safetensors_read_directly(tmp_path):
    from safetensors.torch import save_file

    net = Net()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    ck = read_checkpoint(tmp_path / "w.safetensors")
    assert ck.unwrapped == [] and torch.equal(ck.state["head.weight"], net.head.weight)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil(marker)}, path)
    with pytest.raises(FerlensError, match="weights_only=True") as e:
        read_checkpoint(path)
    assert not marker.exists()                      # nothing was executed
    assert "\n" not in str(e.value) and str(e.value).endswith(".")
    pickle.loads(pickle.dumps(Evil(marker)))        # the payload is real: plain pickle does create the file
    assert marker.exists()


def test_mismatch_is_one_sentence_with_a_key_map_example():
    net = Net()
    state = {k.replace("cnn.", "backbone."): v for k, v in net.state_dict().items()}
    with pytest.raises(FerlensError) as e:
        load_strict(Net(), state, "ckpt.pth")
    msg = str(e.value)
    assert "4 missing (cnn.0.weight, cnn.0.bias, cnn.1.weight and 1 more)" in msg or "missing (cnn." in msg
    assert "unexpected (backbone." in msg and "--key-map '^backbone\\.=cnn.'" in msg
    assert "\n" not in msg and msg.endswith(".")
    renamed = apply_key_map(state, parse_key_map([r"^backbone\.=cnn."]))
    load_strict(Net(), renamed, "ckpt.pth")         # the suggested rule fixes it


def test_key_map_drop_collision_and_bad_regex():
    t = torch.zeros(1)
    assert apply_key_map({"aux.w": t, "a.w": t}, parse_key_map([r"^aux\..*="])) == {"a.w": t}
    with pytest.raises(FerlensError, match="renames both"):
        apply_key_map({"a.w": t, "b.w": t}, parse_key_map([r"^(a|b)\.=c."]))
    with pytest.raises(FerlensError, match="not a valid regular expression"):
        parse_key_map(["^(x=y"])
    with pytest.raises(FerlensError, match="REGEX=REPLACEMENT"):
        parse_key_map(["nothing"])


def test_shape_mismatch_names_model_options():
    state = Net().state_dict()
    state["head.weight"] = torch.zeros(3, 4)
    with pytest.raises(FerlensError, match=r"1 with another shape \(head.weight \(3, 4\) vs \(2, 4\)\).*model_kwargs"):
        load_strict(Net(), state, "ckpt.pth")


def test_old_checkpoint_without_bn_counter_loads():
    net = Net()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_strict(Net(), state, "old.pth")


def test_suggestions():
    assert suggest_key_map(["cnn.layer1.0.weight"], ["backbone.layer1.0.weight"]) == "--key-map '^backbone\\.=cnn.'"
    assert suggest_key_map(["cnn.layer1.weight"], ["layer1.weight"]) == "--key-map '^=cnn.'"
    assert suggest_key_map(["a.b"], ["x.y"]) == "--key-map '^OLD\\.=NEW.'"


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "c.pth")
    with pytest.raises(FerlensError, match="holds no state dict of tensors"):
        read_checkpoint(tmp_path / "c.pth")
    (tmp_path / "x.pth").write_bytes(b"not a torch file")
    with pytest.raises(FerlensError, match="cannot be read as a torch file"):
        read_checkpoint(tmp_path / "x.pth")
    with pytest.raises(FerlensError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")
