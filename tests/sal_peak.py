"""Peak resident memory of layer_sal calls, measured in a fresh process (run by test_sal.py).

torch's CPU tensors come from malloc, which tracemalloc does not see; the process's peak RSS
(ru_maxrss) does, and a fresh process keeps other tests' allocations out of it. Prints one JSON
object: the peak growth in bytes during each call, after a warm-up call on one batch."""
import json
import resource
import sys

import torch


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main(spec: dict) -> None:
    from ulviz import create_model
    import ulviz.measure.sal as S
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if spec.get("vmap"):
        S.VMAP_DEVICES = {"cpu"}  # the CUDA per-layer path (two copies in one vmapped call)
    if spec["model"] == "tiny-conv":  # cheap enough for 50,000 images in CI, with real conv activations
        from torch import nn
        model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    else:
        model = create_model(spec["model"], (3, 32, 32), 10, width=spec.get("width"))
    n = spec["samples"]
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    kw = dict(batch_size=spec["batch_size"], device="cpu", batched=spec["batched"], cache_bytes=spec["cache_bytes"],
              memory_bytes=spec["memory_bytes"])
    S.layer_sal(model, (x[:spec["batch_size"]], y[:spec["batch_size"]]), iters=1, **kw)  # allocator, kernels
    growth, before = [], peak_rss()
    for iters in spec["iters"]:  # each call's growth over the highest peak so far
        S.layer_sal(model, (x, y), iters=iters, **kw)
        growth.append(peak_rss() - before)
        before = peak_rss()
    print(json.dumps({"growth": growth, "data_bytes": x.numel() * x.element_size()}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
