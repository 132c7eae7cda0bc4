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
