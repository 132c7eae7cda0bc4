"""SAL speed and fidelity, measured side by side in one run on this machine.

Prints, for the demo model (digits, lenet5) and for resnet18 on a small 32x32 set:
- the plain per-layer loop (the paper's script structure), `exact` and `fast` times, the speed-ups
  and the largest difference between the plain loop's and `exact`'s numbers;
- the Spearman correlation of `fast` with `exact` across layers, averaged over a run's epochs;
- the UD of each unlearnable method under both estimators.

    .venv/bin/python benchmarks/sal_speed.py            # full tables (a few minutes on 2 cores)
    .venv/bin/python benchmarks/sal_speed.py --quick    # fewer epochs, a smoke run
    .venv/bin/python benchmarks/sal_speed.py --device cuda --cifar data/cifar10-subset --speed-only
        # plain loop vs exact (per layer, and all layers batched) for lenet5, cnn and resnet18 on CIFAR-10
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from ulviz import DataConfig, ModelConfig, PoisonConfig, RunConfig, TrainConfig, create_model, load_dataset, train
from ulviz.sal import layer_sal, plain_loop_sal
from ulviz.ud import unlearnable_distance


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def speed_row(label, model, x, y, iters, batch_size, device="cpu"):
    kw = dict(iters=iters, batch_size=batch_size)
    dev = torch.device(device)
    model, x, y = model.to(dev), x.to(dev), y.to(dev)
    if dev.type == "cuda":  # warm-up: the first kernels of a process pay for their loading
        layer_sal(model, (x[:batch_size], y[:batch_size]), device=dev, iters=1)
    t_plain, plain = timed(lambda: plain_loop_sal(model, x, y, **kw))
    t_exact, exact = timed(lambda: layer_sal(model, (x, y), device=dev, batched=False, **kw))
    t_batched, batched = timed(lambda: layer_sal(model, (x, y), device=dev, batched=True, **kw))
    t_fast, fast = timed(lambda: layer_sal(model, (x, y), estimator="fast", subset=len(x), device=dev, **kw))
    def diff(parts):
        return max(abs(getattr(exact[k], p) - getattr(plain[k], p)) for k in plain for p in parts)
    # float32: the ascent amplifies last-bit differences (batched vs per-sample conv kernels), so a
    # sample near the decision boundary can flip; acc parts then differ by a multiple of 1/samples
    return dict(case=label, layers=len(plain), samples=len(x), iters=iters, plain_s=t_plain, exact_s=t_exact,
                exact_speedup=t_plain / t_exact, batched_s=t_batched, batched_speedup=t_plain / t_batched,
                batched_vs_exact=max(abs(getattr(exact[k], p) - getattr(batched[k], p)) for k in exact
                                     for p in ("sal", "s_max", "s_min")),
                fast_s=t_fast, fast_speedup=t_plain / t_fast,
                max_diff_loss=diff(("sal", "s_max", "s_min")), max_diff_acc=diff(("acc_drop", "acc_rise")))


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def resnet_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A small 32x32 RGB set: the digits, upsampled to 32x32 and repeated over 3 channels."""
    ds = load_dataset("digits", train_limit=n)
    x = F.interpolate(ds.x_train, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return x.clamp(0, 1), ds.y_train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where the speed table is measured (cpu, cuda, mps)")
    p.add_argument("--resnet-samples", type=int, default=64, help="size of the resnet18 case's data")
    p.add_argument("--speed-only", action="store_true", help="skip the fidelity and UD tables")
    p.add_argument("--cifar", help="a CIFAR-10 directory (binary layout): speed rows for lenet5, cnn and resnet18 on it")
    p.add_argument("--cifar-samples", type=int, default=512, help="training images of the CIFAR rows")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    epochs = args.epochs or (4 if args.quick else 15)
    import pandas as pd
    pd.set_option("display.width", 200)

    # --- speed on one trained model per case --------------------------------------------------
    base = RunConfig(name="clean", data=DataConfig("digits"), model=ModelConfig("lenet5"),
                     train=TrainConfig(epochs=epochs, device="cpu"))
    snaps = []
    train(base, callbacks=[lambda c: snaps.append({k: v.clone() for k, v in c.model.state_dict().items()})])
    ds = load_dataset("digits")
    lenet = create_model("lenet5", ds.image_shape, 10)
    lenet.load_state_dict(snaps[-1])
    rows = [speed_row("lenet5 / digits (train set)", lenet, ds.x_train, ds.y_train, iters=10, batch_size=256,
                      device=args.device)]
    xr, yr = resnet_set(32 if args.quick else args.resnet_samples)
    torch.manual_seed(0)
    resnet = create_model("resnet18", (3, 32, 32), 10, width=16)
    opt = torch.optim.SGD(resnet.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):  # a few steps so the model is not at its random init
        opt.zero_grad()
        F.cross_entropy(resnet(xr), yr).backward()
        opt.step()
    rows.append(speed_row("resnet18(w16) / digits@32x32", resnet, xr, yr, iters=2 if args.quick else 10, batch_size=32,
                          device=args.device))
    if args.cifar:
        cifar = load_dataset(DataConfig("cifar10", data_dir=args.cifar, train_limit=args.cifar_samples))
        for name, width in (("lenet5", None), ("cnn", None), ("resnet18", None)):
            torch.manual_seed(0)
            net = create_model(name, cifar.image_shape, cifar.num_classes, width=width)
            opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            for i in range(0, len(cifar.x_train), 128):  # one epoch, so the model is not at its init
                opt.zero_grad()
                F.cross_entropy(net(cifar.x_train[i:i + 128]), cifar.y_train[i:i + 128]).backward()
                opt.step()
            rows.append(speed_row(f"{name} / cifar10 ({len(cifar.x_train)} images)", net.eval(), cifar.x_train,
                                  cifar.y_train, iters=2 if args.quick else 10, batch_size=128, device=args.device))
    print(f"\n== SAL speed on {args.device} (seconds; speed-ups over the plain per-layer loop) ==")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.speed_only:
        return

    # --- fidelity and UD over whole runs -------------------------------------------------------
    methods = [("clean", PoisonConfig("clean")), ("random-sample", PoisonConfig("random", params={"mode": "sample"})),
               ("random-class", PoisonConfig("random", params={"mode": "class"}))]
    sal = {"exact": {}, "fast": {}}
    fast_time = exact_time = 0.0
    for name, poison in methods:
        cfg = replace(base, name=name, poison=poison)
        snaps = []
        train(cfg, callbacks=[lambda c: snaps.append({k: v.clone() for k, v in c.model.state_dict().items()})])
        data = load_dataset("digits")
        from ulviz.poisons import make_poison
        xtr = make_poison(poison, data).x_train
        model = create_model("lenet5", data.image_shape, 10)
        for est in ("exact", "fast"):
            mat = []
            for state in snaps[1:]:
                model.load_state_dict(state)
                t, rec = timed(lambda: layer_sal(model, (xtr, data.y_train), estimator=est, device="cpu"))
                if est == "fast":
                    fast_time += t
                else:
                    exact_time += t
                mat.append([rec[k].sal for k in rec])
            sal[est][name] = np.array(mat)
    rhos = [spearman(e, f) for name in sal["exact"] for e, f in zip(sal["exact"][name], sal["fast"][name])]
    print(f"\n== fast vs exact over {epochs} epochs x {len(methods)} runs (lenet5 / digits) ==")
    print(f"Spearman correlation across layers, mean over epochs: {np.mean(rhos):.3f} (min {np.min(rhos):.3f})")
    print(f"whole-run SAL time: exact {exact_time:.1f} s, fast {fast_time:.1f} s, ratio {exact_time / fast_time:.1f}x")
    ud = {}
    for est in ("exact", "fast"):
        res = unlearnable_distance(sal[est]["clean"], sal[est])
        ud[est] = res.ud
        print(f"{est:5s}: threshold {res.threshold:.4f}")
    table = pd.DataFrame({"method": list(ud["exact"]), "UD exact": list(ud["exact"].values()),
                          "UD fast": list(ud["fast"].values())})
    table["|diff|"] = (table["UD exact"] - table["UD fast"]).abs()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    e, f = table["UD exact"].to_numpy(), table["UD fast"].to_numpy()
    pairs = [(i, j) for i in range(len(e)) for j in range(i + 1, len(e))]
    reversed_pairs = sum((e[i] - e[j]) * (f[i] - f[j]) < 0 for i, j in pairs)
    ties = sum((e[i] - e[j]) * (f[i] - f[j]) == 0 for i, j in pairs)
    print(f"method pairs ordered oppositely by the two estimators: {reversed_pairs} of {len(pairs)} (tied in one: {ties})")


if __name__ == "__main__":
    main()
