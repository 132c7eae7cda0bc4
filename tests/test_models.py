import numpy as np
import pytest
import torch

from ulviz import UnknownNameError, create_model, list_models, weight_layer_names


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape, classes", [((1, 8, 8), 10), ((3, 32, 32), 100), ((1, 28, 28), 10)])
def test_forward_shape(name, shape, classes):
    width = 8 if name == "resnet18" else None
    model = create_model(name, shape, classes, width=width)
    out = model(torch.rand(2, *shape))
    assert out.shape == ((2, classes, *shape[1:]) if name == "fcn" else (2, classes))  # fcn: a map per class
    names = dict(model.named_parameters())
    layers = weight_layer_names(model)
    assert layers and all(n in names and names[n].dim() in (2, 4) for n in layers)


def test_registry_names_and_architecture_facts():
    assert list_models() == ["linear", "mlp", "lenet5", "cnn", "fcn", "resnet18"]
    assert weight_layer_names(create_model("linear", (1, 8, 8), 10)) == ["1.weight"]
    lenet = create_model("lenet5", (1, 28, 28), 10)
    assert lenet.fc1.in_features == 16 * 5 * 5  # classic LeNet-5 on 28x28
    resnet = create_model("resnet18", (3, 32, 32), 10)
    assert len(weight_layer_names(resnet)) == 21  # 17 convs + 3 shortcut convs + linear
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in resnet.modules())
    assert 11.1e6 < sum(p.numel() for p in resnet.parameters()) < 11.2e6


def test_unknown_model():
    with pytest.raises(UnknownNameError, match="lenet5"):
        create_model("vgg", (1, 8, 8), 10)


# -- stages of models that are not ours (torch.fx) -----------------------------------------------

class _SkipNet(torch.nn.Module):
    """Not a Sequential, no stages(): a conv stem, a residual block, a dense head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.conv = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.head = torch.nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.bn(self.conv(h)))  # two values live across the block: no cut inside
        return self.head(torch.flatten(h, 1))


class _Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent: symbolic tracing fails


def test_fx_split_of_a_skip_connection_equals_the_forward_and_shares_parameters():
    import warnings
    from ulviz.models.registry import model_stages
    torch.manual_seed(0)
    model = _SkipNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # traceable: no notice
        stages = model_stages(model)
    assert stages[0] is model.stem and stages[-1] is model.head  # single calls are the submodules themselves
    assert len(stages) >= 4
    block = [s for s in stages if any(p is model.conv.weight for p in s.parameters())]
    assert len(block) == 1 and any(b is model.bn for b in block[0].modules())  # the residual block is one stage
    x = torch.randn(5, 1, 8, 8)
    h = x
    for s in stages:
        h = s(h)
    assert torch.equal(h, model(x))
    ours = {id(p) for s in stages for p in s.parameters()}
    assert ours == {id(p) for p in model.parameters()}  # the model's own tensors, none copied


def test_untraceable_model_falls_back_to_one_stage_with_one_notice():
    from ulviz.models.registry import model_stages
    model = _Branchy()
    with pytest.warns(UserWarning, match="_Branchy could not be split into stages with torch.fx") as record:
        assert model_stages(model) == [model]
    assert len(record) == 1 and "\n" not in str(record[0].message)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model_stages(model) == [model]  # said once per class


def test_sal_and_landscape_of_a_user_model_are_unchanged_by_its_stages(monkeypatch):
    """The fx stages only share work: SAL and a plane equal those of the model as one stage, and
    the plane's points equal a hand-loaded copy of the model; the caller's model is untouched."""
    import copy
    from ulviz.measure.landscape.surfaces import plane
    from ulviz.measure.sal import layer_sal
    import ulviz.models.registry as models
    torch.manual_seed(1)
    model = _SkipNet().eval().double()
    x, y = torch.randn(24, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (24,))
    before = copy.deepcopy(model.state_dict())
    staged_sal = layer_sal(model, (x, y), estimator="exact", iters=3)
    staged = plane(model, (x, y), resolution=5, span=0.5)
    monkeypatch.setattr(models, "fx_stages", lambda m: [m])
    whole_sal = layer_sal(model, (x, y), estimator="exact", iters=3)
    whole = plane(model, (x, y), resolution=5, span=0.5)
    for name in whole_sal:
        assert staged_sal[name].sal == pytest.approx(whole_sal[name].sal, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(staged.loss, whole.loss, rtol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # two grid points by hand: the weights moved along the directions, loaded into a copy
    dirs = staged.directions
    for i, j in [(0, 0), (1, 3), (4, 2)]:
        a, b = staged.coords[0][i], staged.coords[1][j]
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p += a * dirs[0][n].double() + b * dirs[1][n].double()
        expected = torch.nn.functional.cross_entropy(moved(x), y).item()
        assert staged.loss[i, j] == pytest.approx(expected, rel=1e-9)
