"""Architectures by name, each adapting to the dataset's channels, image size and classes.

``create_model("lenet5", in_shape=(1, 8, 8), num_classes=10)`` works the same for every name in
:func:`list_models`, so the CLI, the app and the tests all list and build the same models.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from ..core.errors import UnknownNameError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def _register(name: str):
    def deco(fn):
        _MODELS[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_MODELS)


def create_model(name: str, in_shape: tuple[int, int, int], num_classes: int, width: int | None = None) -> nn.Module:
    """A fresh model `name` for images of `in_shape` = (C, H, W) and `num_classes` outputs."""
    if name not in _MODELS:
        raise UnknownNameError("model", name, list_models())
    return _MODELS[name](tuple(in_shape), num_classes, width)


def build_model(config, dataset) -> nn.Module:
    """The model of a run (a RunConfig) for `dataset`, with the run's seeded initial weights."""
    torch.manual_seed(config.train.seed)
    return create_model(config.model.name, dataset.image_shape, dataset.num_classes, config.model.width)


def weight_layer_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the Conv/Linear weight tensors: the layers SAL measures."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


@_register("linear")
def _linear(in_shape, k, width):
    """A single linear classifier on the flattened image (the paper's convergence example)."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k))


@_register("mlp")
def _mlp(in_shape, k, width):
    """The classic multilayer perceptron: one hidden ReLU layer of `width` (default 512) units."""
    c, h, w = in_shape
    hidden = width or 512
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, k))


class LeNet5(nn.Sequential):
    """LeNet-5 (conv 6, conv 16, fc 120, fc 84, fc k). On images under 16 px the second conv is
    padded so that 8x8 digits still leave a 2x2 map after both poolings. A Sequential, so that
    analyses can run it stage by stage."""

    def __init__(self, in_shape, k, width=None):
        c, h, w = in_shape
        c1 = width or 6
        features = [
            ("conv1", nn.Conv2d(c, c1, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, 16, 5, padding=0 if min(h, w) >= 16 else 2)), ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ]
        with torch.no_grad():
            n_flat = nn.Sequential(OrderedDict(features))(torch.zeros(1, c, h, w)).shape[1]
        super().__init__(OrderedDict(features + [
            ("fc1", nn.Linear(n_flat, 120)), ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU()), ("fc3", nn.Linear(84, k)),
        ]))
        he_init(self)


def he_init(net: nn.Module) -> None:
    """He (Kaiming-normal, fan-in) weights and zero biases for every Conv/Linear of a ReLU net.
    PyTorch's default (uniform, std 1/sqrt(3 fan_in)) shrinks the signal about sqrt(6)x per ReLU
    layer: a LeNet-5 on 8x8 digits then sat on the loss plateau of 2.30 for its first ~70 SGD
    steps, so a 3-epoch job learned nothing (test accuracy 0.075). ulviz's own LeNet-5 uses it; the
    resnet18 keeps PyTorch's default, as the unlearnable-examples code it follows does."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


_register("lenet5")(LeNet5)


@_register("cnn")
def _cnn(in_shape, k, width):
    """A small conv net with batch norm: w, 2w, 4w channels, global average pooling, one fc.
    Its modules are named (conv1, bn1, ..., fc) so that layer names read as such in every table."""
    c = in_shape[0]
    w = width or 32

    def block(i, cin, cout, pool):
        layers = [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)), (f"bn{i}", nn.BatchNorm2d(cout)),
                  (f"relu{i}", nn.ReLU())]
        return layers + ([(f"pool{i}", nn.MaxPool2d(2))] if pool else [])

    return nn.Sequential(OrderedDict(
        block(1, c, w, False) + block(2, w, 2 * w, True) + block(3, 2 * w, 4 * w, True)
        + [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * w, k))]))


@_register("fcn")
def _fcn(in_shape, k, width):
    """A small fully convolutional net for dense tasks (segment): three 3x3 convolutions keeping
    the image size (w, 2w channels), then a 1x1 convolution to one map per class."""
    c = in_shape[0]
    w = width or 16
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, w, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1)), ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(2 * w, 2 * w, 3, padding=1)), ("relu3", nn.ReLU()),
        ("head", nn.Conv2d(2 * w, k, 1)),
    ]))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (He et al.; as in the unlearnable-examples literature):
    a 3x3 stride-1 stem and no max-pool, four stages of two basic blocks, widths w..8w (w = 64)."""

    def __init__(self, in_shape, k, width=None):
        super().__init__()
        w = width or 64
        self.conv1 = nn.Conv2d(in_shape[0], w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        stages, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(8 * w, k)

    def stages(self) -> list[nn.Module]:
        """The forward pass as a chain of modules (stem, eight blocks, head); see :func:`model_stages`."""
        stem = nn.Sequential(self.conv1, self.bn1, nn.ReLU())
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.linear)
        return [stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4, head]

    def forward(self, x):
        for stage in self.stages():
            x = stage(x)
        return x


_register("resnet18")(ResNet18)


def model_stages(model: nn.Module) -> list[nn.Module]:
    """The model's forward pass as a chain of modules whose composition is the model.

    Analyses that perturb one layer (SAL, landscapes restricted to a layer) run the unperturbed
    stages before it once and reuse their output. A model may say how it splits with a
    ``stages()`` method; a Sequential splits into its children; anything else is split by
    :func:`fx_stages` (symbolic tracing), or stays one stage, with a one-line notice, when it
    cannot be traced.
    """
    if hasattr(model, "stages"):
        return list(model.stages())
    if isinstance(model, nn.Sequential):
        return list(model.children())
    return fx_stages(model)


_NOTICED: set[str] = set()  # model classes already reported as untraceable (one notice each)


def fx_stages(model: nn.Module) -> list[nn.Module]:
    """Any module split into a chain of stages with ``torch.fx``: trace its forward into a graph,
    cut the graph wherever exactly one value flows on (inside a skip connection two do, so a
    residual block stays whole) and make each piece a stage that calls the model's own
    submodules, so parameters are shared, not copied. A piece that is one submodule call is that
    submodule itself. Falls back to ``[model]`` with a one-line warning when tracing fails
    (data-dependent control flow), the forward does not take one tensor, or a parameter would be
    used by two stages. Traced code is fixed at trace time: a forward that branches on
    ``self.training`` keeps the branch of the model's current mode."""
    import warnings

    from torch import fx
    try:
        graph = fx.symbolic_trace(model).graph
        stages = _split_graph(model, graph)
    except Exception as e:  # tracing raises many types (TraceError, TypeError, ...); all mean "cannot"
        stages, why = None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    else:
        why = "its forward does not map one tensor to one tensor through shareable cuts"
    if stages is None:
        name = type(model).__name__
        if name not in _NOTICED:
            _NOTICED.add(name)
            warnings.warn(f"ulviz: {name} could not be split into stages with torch.fx ({why}); it runs as one "
                          "stage (correct, without the shared-prefix speed-up)", stacklevel=2)
        return [model]
    return stages


def _split_graph(model: nn.Module, graph) -> list[nn.Module] | None:
    from torch import fx
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
        return None
    order = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in nodes}
    body = [n for n in nodes if n.op not in ("placeholder", "output", "get_attr")]
    result = outputs[0].args[0]
    # a cut after node i: the only value (parameters aside) still needed later is node i itself
    cuts = [n for n in body if n is not result and
            [m for m in nodes[:order[n] + 1] if m.op != "get_attr" and last_use[m] > order[n]] == [n]]
    pieces, start = [], inputs[0]
    for end in cuts + [result]:
        segment = [n for n in body if order[start] < order[n] <= order[end]]
        pieces.append(_stage(model, segment, start, end))
        start = end
    owners = {}
    for i, piece in enumerate(pieces):
        for p in piece.parameters():
            if owners.setdefault(id(p), i) != i:
                return None  # a parameter used in two stages: perturbing it in one would miss the other
    return pieces


def _stage(model: nn.Module, segment: list, inp, out) -> nn.Module:
    """One piece of the traced graph as a module: the submodule itself when the piece is a
    single call of it on the piece's input, else a GraphModule over the model's own submodules."""
    from torch import fx
    only = segment[0] if len(segment) == 1 else None
    if only is not None and only.op == "call_module" and only.args == (inp,) and not only.kwargs:
        return model.get_submodule(only.target)
    g = fx.Graph()
    env = {inp: g.placeholder("x")}

    def arg(a):
        if a not in env:  # a parameter or buffer read directly (get_attr): every piece gets its own read
            env[a] = g.node_copy(a, arg)
        return env[a]
    for n in segment:
        env[n] = g.node_copy(n, arg)
    g.output(env[out])
    return fx.GraphModule(model, g)
