"""Layer surgery: transplant, reset and freeze touch exactly the chosen layers; SPECs pick what they say."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import tiny_config
from ulviz import ModelConfig, SALConfig, open_run, train
from ulviz.cli import main
from ulviz.core.errors import UlvizError
from ulviz.measure.surgery import SurgeryConfig, layer_surgery, layer_tensors, random_layers, select_layers
from ulviz.models.registry import create_model

RANDOM = {"mode": "class", "eps": 0.2}


def _pair(d, model: ModelConfig, epochs: int, sal=SALConfig(), train_limit=None):
    """A clean run and its protected twin (same seed, so the same initial weights)."""
    cfg = replace(tiny_config(epochs=epochs), name="clean", model=model, sal=sal)
    cfg = replace(cfg, data=replace(cfg.data, train_limit=train_limit))
    train(cfg, d / "clean.h5")
    train(replace(cfg, name="random", poison=replace(cfg.poison, method="random", params=RANDOM)), d / "random.h5")
    return d / "random.h5", d / "clean.h5"


@pytest.fixture(scope="module")
def resnets(tmp_path_factory):
    """A tiny ResNet-18 pair: batch-norms follow every conv, a shortcut conv in three blocks."""
    return _pair(tmp_path_factory.mktemp("resnets"), ModelConfig("resnet18", width=2), 1, train_limit=256)


@pytest.fixture(scope="module")
def mlps(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("mlps"), ModelConfig("mlp", width=32), 3,
                 SALConfig(estimator="fast", subset=64))


def test_layer_tensors_give_each_entry_of_a_resnet_to_exactly_one_layer():
    model = create_model("resnet18", (3, 8, 8), 10, width=2)
    names = [n for n, _ in model.named_parameters() if n.endswith("weight") and model.get_parameter(n).dim() > 1]
    per_layer = {n: layer_tensors(model, [n]) for n in names}
    flat = [k for keys in per_layer.values() for k in keys]
    assert sorted(flat) == sorted(model.state_dict()) and len(flat) == len(set(flat))
    assert per_layer["conv1.weight"] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                         "bn1.running_var", "bn1.num_batches_tracked"]
    assert "layer2.0.shortcut.1.running_var" in per_layer["layer2.0.shortcut.0.weight"]
    assert per_layer["linear.weight"] == ["linear.weight", "linear.bias"]


def test_transplant_of_every_layer_is_the_clean_run_and_of_none_the_protected(resnets):
    protected, clean = resnets
    p, c = open_run(protected), open_run(clean)
    assert c.metrics.test_acc.iloc[-1] != p.metrics.test_acc.iloc[-1]  # the two differ, so the check has teeth
    every = layer_surgery(protected, clean, SurgeryConfig(layers="all"), device="cpu")
    assert every.accuracy == c.metrics.test_acc.iloc[-1]  # exactly, as training logged it
    assert all(torch.equal(every.state[k], v) for k, v in c.snapshot(-1).items())
    nothing = layer_surgery(protected, clean, SurgeryConfig(layers="none"), device="cpu")
    assert nothing.accuracy == p.metrics.test_acc.iloc[-1] and nothing.tensors == []
    assert every.restored == pytest.approx(1.0) and nothing.restored == pytest.approx(0.0)
    start = layer_surgery(protected, clean, SurgeryConfig(layers="all", epoch=0), device="cpu")
    assert start.accuracy == c.metrics.test_acc.iloc[0] and start.epoch == 0


def test_transplant_of_some_layers_copies_them_and_their_batchnorm_only(resnets):
    protected, clean = resnets
    p, c = open_run(protected).snapshot(-1), open_run(clean).snapshot(-1)
    r = layer_surgery(protected, clean, SurgeryConfig(layers="layer2,conv1"), device="cpu")
    assert "bn1.running_mean" in r.tensors and "layer2.1.bn2.weight" in r.tensors
    assert not any(k.startswith(("layer1", "layer3", "layer4", "linear")) for k in r.tensors)
    for k in p:
        assert torch.equal(r.state[k], c[k] if k in r.tensors else p[k]), k


def test_reset_trains_only_the_chosen_layers(resnets):
    protected, clean = resnets
    before = open_run(protected).snapshot(-1)
    r = layer_surgery(protected, clean, SurgeryConfig(op="reset", layers="layer3", steps=5), device="cpu")
    assert r.tensors and all(k.startswith("layer3") for k in r.tensors)
    for k, v in before.items():
        if k not in r.tensors:
            assert torch.equal(r.state[k], v), k  # bit-identical, batch-norm statistics included
    changed = [k for k in r.tensors if not torch.equal(r.state[k], before[k])]
    assert "layer3.0.conv1.weight" in changed and "layer3.0.bn1.running_mean" in changed


def test_freeze_keeps_the_chosen_layers_at_the_clean_values_and_trains_the_rest(resnets):
    protected, clean = resnets
    start, donor = open_run(protected).snapshot(0), open_run(clean).snapshot(-1)
    r = layer_surgery(protected, clean, SurgeryConfig(op="freeze", layers="conv1,linear", steps=5), device="cpu")
    assert set(r.tensors) == {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                              "bn1.num_batches_tracked", "linear.weight", "linear.bias"}
    for k in r.tensors:
        assert torch.equal(r.state[k], donor[k]), k
    assert not torch.equal(r.state["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])
    assert not torch.equal(r.state["layer4.1.bn2.running_var"], start["layer4.1.bn2.running_var"])


def test_layer_specs_by_name_and_by_sal(mlps):
    protected, clean = mlps
    p, c = open_run(protected), open_run(clean)
    names = p.layer_names
    assert select_layers("all", p) == names and select_layers("none", p) == []
    assert select_layers(names[1].split(".")[0], p) == [names[1]]
    mean_p, mean_c = p.sal["sal"].mean(0), c.sal["sal"].mean(0)
    top = [names[i] for i in sorted(np.argsort(mean_p)[::-1][:2])]
    assert select_layers("sal-top:2", p) == top
    assert select_layers("sal-bottom:1", p) == [names[int(np.argmin(mean_p))]]
    assert select_layers("sal-diff:1", p, c) == [names[int(np.argmax(np.abs(mean_p - mean_c)))]]
    for bad, message in [("nosuch", "no layer matches 'nosuch'"), ("sal-top:x", "must be an integer"),
                         ("sal-top:99", "between 0 and"), ("", "empty layer SPEC")]:
        with pytest.raises(UlvizError, match=message):
            select_layers(bad, p)
    with pytest.raises(UlvizError, match="sal-diff needs the clean run"):
        select_layers("sal-diff:1", p)


def test_sal_specs_need_sal_and_ops_need_their_clean_run(resnets):
    protected, clean = resnets
    with pytest.raises(UlvizError, match="no SAL stored"):
        layer_surgery(protected, clean, SurgeryConfig(layers="sal-top:2"))
    with pytest.raises(UlvizError, match="transplant needs the clean run"):
        layer_surgery(protected, None, SurgeryConfig())
    with pytest.raises(UlvizError, match="no epoch 7"):
        layer_surgery(protected, clean, SurgeryConfig(epoch=7))
    with pytest.raises(UlvizError, match="unknown surgery operation 'cut'"):
        layer_surgery(protected, clean, SurgeryConfig(op="cut"))


def test_random_layers_are_seeded_and_in_model_order():
    names = [f"l{i}" for i in range(10)]
    a = random_layers(names, 5, 3)
    assert a == random_layers(names, 5, 3) and len(a) == 5 and a == [n for n in names if n in a]
    assert any(random_layers(names, 5, s) != a for s in range(4, 10))


def test_cli_surgery_and_sharpness(mlps, capsys):
    protected, clean = mlps
    assert main(["surgery", str(protected), "--clean", str(clean), "--layers", "all"]) == 0
    out = capsys.readouterr().out
    assert f"{open_run(clean).metrics.test_acc.iloc[-1]:.4f}" in out and "restored 100.0%" in out
    assert main(["surgery", str(protected), "--clean", str(clean), "--layers", "nosuch"]) == 2
    assert "no layer matches" in capsys.readouterr().err
    assert main(["sharpness", str(clean), "--measures", "norm,eig", "--epochs", "3", "--power-iters", "3",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "weight norm (norm)" in out and "top Hessian eigenvalue (eig)" in out
    assert main(["sharpness", str(clean), "--measures", "curvature"]) == 2
    assert "unknown sharpness measure" in capsys.readouterr().err
