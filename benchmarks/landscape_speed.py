"""Speed of a 41x41 loss plane: ulviz.measure.landscape.surfaces.plane against loss-landscapes 3.0.6's random_plane.

Same model, same data (the digits training set, 1437 images, one batch), same resolution, filter
normalization, on the CPU, timed side by side in one run. Also prints our time per grid point
divided by the time of one plain forward pass (with the loss) of the same data, and the minor page
faults per grid point of each (ours / loss-landscapes'), measured in one more run of each after
the timed ones: thousands per point mean fresh pages every point, which costs more than the
arithmetic on this machine. `floor_ms` is the least time one exact grid point can take here, and
`ceiling` the speedup over loss-landscapes that this floor allows (see layer_floor_ms).

    .venv/bin/pip install -e '.[bench]'       # loss-landscapes==3.0.6
    .venv/bin/python benchmarks/landscape_speed.py [--resolution 41] [--device cpu] [--models linear,mlp,lenet5]
        [--user-models seqcnn,skipnet,mlp128]

The "user models" are networks defined here, as a new user would write them, not ours: a
Sequential CNN without pooling (two 3x3 convolutions of 16 and 32 channels, a dense head), a
non-Sequential conv net with a skip connection (split into stages by torch.fx), and an MLP of 128
hidden units.
"""
from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch
from torch.nn import functional as F

from torch import nn

from ulviz import create_model, load_dataset
from ulviz.measure.landscape.surfaces import plane


class SkipNet(nn.Module):
    """A user's conv net with a skip connection: not a Sequential, no stages() method."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.conv(h))
        return self.head(torch.flatten(h, 1))


USER_MODELS = {
    "seqcnn": lambda: nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                    nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 10)),
    "skipnet": SkipNet,
    "mlp128": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)),
}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def minor_faults() -> int:
    """Pages this process has faulted in so far: a loop that keeps getting fresh pages from the
    system pays for each (see ulviz.core.devices.settle_cpu_allocator)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_of(fn) -> int:
    start = minor_faults()
    fn()
    return minor_faults() - start


def layer_floor_ms(model: nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    """The least time an exact evaluation of one grid point can take on this machine, in ms.

    Every weighted layer after the first has new weights at every point, so any exact method runs
    it once per point on the full data (the first is shared across points by linearity, ulviz's
    shortcut). Each such layer is timed alone on the input it sees in a plain forward, in whichever
    form is fastest (convolutions channels-last or not, class heads as they are or padded to 16
    outputs), best of `repeats`. Activations, the loss and all overhead come on top, so
    loss-landscapes' time per point divided by this bounds the speedup of any exact method."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    inputs = {}

    def keep(layer, inp, out):  # returns None: a forward hook's return value would replace the output
        inputs.setdefault(layer, inp[0].detach())
    hooks = [m.register_forward_hook(keep) for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    total = 0.0
    for m in layers[1:]:
        h = inputs[m]
        forms = [(m, h)]
        if isinstance(m, nn.Conv2d):
            cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
            forms.append((cl, h.contiguous(memory_format=torch.channels_last)))
        elif m.out_features < 16:
            forms.append((nn.Linear(m.in_features, 16).to(h.device, h.dtype), h))
        with torch.no_grad():
            # each form twice, alternating: the machine's speed drifts
            total += min(best_of(lambda: layer(inp), repeats) for layer, inp in forms * 2)
    return total * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=41)
    p.add_argument("--models", default="linear,mlp,lenet5", help="bundled models ('' for none)")
    p.add_argument("--user-models", default=",".join(USER_MODELS), help="networks defined here ('' for none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Loss
    except ImportError:
        raise SystemExit("loss-landscapes is not installed: .venv/bin/pip install -e '.[bench]'")
    ds = load_dataset("digits")
    device = torch.device(args.device)
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    r = args.resolution
    rows = []
    makers = {n: (lambda n=n: create_model(n, ds.image_shape, ds.num_classes)) for n in args.models.split(",") if n}
    makers.update({f"user:{n}": USER_MODELS[n] for n in args.user_models.split(",") if n})
    for name, make in makers.items():
        torch.manual_seed(0)
        model = make().to(device).eval()

        def forward():
            with torch.no_grad():
                F.cross_entropy(model(x), y).item()

        def ours():
            plane(model, (x, y), resolution=r, device=device)

        def theirs():
            loss_landscapes.random_plane(model, Loss(F.cross_entropy, x, y), distance=1, steps=r,
                                         normalization="filter", deepcopy_model=True)

        forward()  # warm-up
        ours()
        try:
            theirs()
        except RuntimeError as e:  # loss-landscapes 3.0.6 builds filter norms on the CPU: fails on a GPU
            print(f"{name}: loss-landscapes fails on {device}: {str(e).splitlines()[0]}")
            theirs = None
        # interleaved, best of each: the machine's speed drifts, so both see the same conditions
        t_fwd, t_ours, t_theirs = [], [], []
        for _ in range(args.repeats):
            t_fwd.append(best_of(forward, 10))
            t_ours.append(best_of(ours, 1))
            t_theirs.append(best_of(theirs, 1) if theirs else float("nan"))
        t_fwd, t_ours, t_theirs = min(t_fwd), min(t_ours), min(t_theirs)
        f_ours, f_theirs = faults_of(ours) / (r * r), faults_of(theirs) / (r * r) if theirs else float("nan")
        floor = layer_floor_ms(model, x)
        rows.append({"model": name, "ulviz_s": t_ours, "loss_landscapes_s": t_theirs, "speedup": t_theirs / t_ours,
                     "forwards_per_point": t_ours / (r * r) / t_fwd, "forward_ms": t_fwd * 1e3,
                     "faults_per_point": f"{f_ours:.0f} / {f_theirs:.0f}", "floor_ms": floor,
                     "ceiling": t_theirs / (r * r) * 1e3 / floor if floor else float("inf")})
        print(f"{name}: ours {t_ours:.2f}s, loss-landscapes {t_theirs:.2f}s", flush=True)
    table = pd.DataFrame(rows)
    print(f"\n== {r}x{r} plane, digits train set ({len(x)} images), {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads ==")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("targets: speedup >= 3 on linear and mlp, >= 1 on lenet5; forwards_per_point <= 1.2 on lenet5; "
          "user models >= 1.5 (user:mlp128 >= 3)")


if __name__ == "__main__":
    main()
