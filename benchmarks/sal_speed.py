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
import copy
import gc
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from ulviz import DataConfig, ModelConfig, PoisonConfig, RunConfig, TrainConfig, create_model, load_dataset, train
from ulviz.measure.sal import layer_sal
from ulviz.measure.sal_reference import plain_loop_sal
from ulviz.measure.ud import unlearnable_distance


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, (RuntimeError, MemoryError)) and ("out of memory" in str(e) or "can't allocate" in str(e)
                                                        or isinstance(e, MemoryError)))


def measured(fn, dev: torch.device) -> dict:
    """{"s": seconds, "gib": peak device memory (CUDA only), "out": result}, or {"error": "OOM"}
    when `fn` runs out of memory: that cell is reported and the table goes on."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    try:
        t, out = timed(fn)
    except Exception as e:  # noqa: BLE001 - one failing cell must not lose the rest of a one-shot GPU run
        import traceback
        traceback.print_exc()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        first = (str(e).splitlines() or [""])[0][:120]
        return {"error": "OOM" if is_oom(e) else "ERROR", "detail": f"{'OOM' if is_oom(e) else 'ERROR'} {type(e).__name__}: {first}"}
    gib = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 30 if dev.type == "cuda" else float("nan")
    return {"s": t, "gib": gib, "out": out}


def weight_flop_fractions(model, x1) -> list[float]:
    """For each Conv/Linear weight in order: the fraction of one forward's multiply-adds spent at
    or after that layer (what its search must recompute, sharing the prefix before it)."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            macs.append(out.numel() * m.weight[0].numel())
        elif isinstance(m, torch.nn.Linear):
            macs.append(out.numel() * m.in_features)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hooks:
            h.remove()
    total = sum(macs)
    return [sum(macs[i:]) / total for i in range(len(macs))]


def search_floor(model, x, y, iters, batch_size, dev) -> dict:
    """The search's arithmetic floor from measured passes: per layer, `iters` rounds of (two
    copies x one forward+backward per batch) + (two copies x one forward per batch), each a full
    model pass for the plain loop ("floor_plain") or only the part from the layer on when the
    prefix is shared ("floor_shared", scaled by each layer's share of the multiply-adds).
    Backward to the weights only is approximated by a full backward, so the floor is generous."""
    net = copy.deepcopy(model).to(dev).eval()
    xb, yb = x[:batch_size].to(dev), y[:batch_size].to(dev)
    n_batches = -(-len(x) // batch_size)

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(xb), yb).backward()

    def fwd():
        with torch.no_grad():
            net(xb)

    for _ in range(3):  # warm-up
        fwd_bwd(), fwd()
    reps = 10
    t_fb = timed(lambda: [fwd_bwd() for _ in range(reps)])[0] / reps
    t_f = timed(lambda: [fwd() for _ in range(reps)])[0] / reps
    fractions = weight_flop_fractions(net, xb[:1])
    per_pass = 2 * iters * n_batches * (t_fb + t_f)
    return dict(fwd_bwd_ms=1e3 * t_fb, floor_plain_s=per_pass * len(fractions), floor_shared_s=per_pass * sum(fractions))


PATHS = ("plain", "exact", "batched", "fast")


def speed_row(label, model, x, y, iters, batch_size, device="cpu", only=PATHS):
    """Every path timed on the same model and data; a path that runs out of memory is reported
    as OOM and the row goes on. Prints a line per path as it finishes."""
    kw = dict(iters=iters, batch_size=batch_size)
    dev = torch.device(device)
    model, x, y = model.to(dev), x.to(dev), y.to(dev)
    if dev.type == "cuda":  # warm-up: the first kernels of a process pay for their loading
        layer_sal(model, (x[:batch_size], y[:batch_size]), device=dev, iters=1)
        layer_sal(model, (x[:batch_size], y[:batch_size]), device=dev, iters=1, batched=True)
    row = dict(case=label, layers=None, samples=len(x), iters=iters)
    row.update(search_floor(model, x, y, iters, batch_size, dev))
    paths = {"plain": lambda: plain_loop_sal(model, x, y, **kw),
             "exact": lambda: layer_sal(model, (x, y), device=dev, batched=False, **kw),
             "batched": lambda: layer_sal(model, (x, y), device=dev, batched=True, **kw),
             "fast": lambda: layer_sal(model, (x, y), estimator="fast", subset=len(x), device=dev, **kw)}
    if dev.type == "cuda":  # the default there: the path chosen by a timed step (batched="measure")
        paths["auto"] = lambda: layer_sal(model, (x, y), device=dev, **kw)
        only = (*only, "auto")
    results = {name: {"error": "not run"} for name in paths}
    for name, fn in ((n, f) for n, f in paths.items() if n in only):
        results[name] = r = measured(fn, dev)
        row[f"{name}_s"] = r.get("s", r.get("error"))
        if dev.type == "cuda":
            row[f"{name}_gib"] = r.get("gib", r.get("error"))
        note = r.get("detail", f"{r['s']:.3g} s" + (f", peak {r['gib']:.2f} GiB" if dev.type == "cuda" else ""))
        print(f"  {label}: {name}: {note}", flush=True)
    plain = results["plain"].get("out") or results["exact"].get("out")
    row["layers"] = len(plain) if plain else None
    for name in ("exact", "batched", "fast", "auto"):
        if name not in results:
            continue
        ok = "s" in results[name] and "s" in results["plain"]
        row[f"{name}_speedup"] = results["plain"]["s"] / results[name]["s"] if ok else float("nan")
    row["exact_vs_floor_shared"] = (results["exact"]["s"] / row["floor_shared_s"]) if "s" in results["exact"] \
        else float("nan")

    def diff(a, b, parts):
        if not (results[a].get("out") and results[b].get("out")):
            return float("nan")
        ra, rb = results[a]["out"], results[b]["out"]
        return max(abs(getattr(ra[k], p) - getattr(rb[k], p)) for k in ra for p in parts)

    # float32: the ascent amplifies last-bit differences (batched vs per-sample conv kernels), so a
    # sample near the decision boundary can flip; acc parts then differ by a multiple of 1/samples
    row["batched_vs_exact"] = diff("exact", "batched", ("sal", "s_max", "s_min"))
    row["max_diff_loss"] = diff("exact", "plain", ("sal", "s_max", "s_min"))
    row["max_diff_acc"] = diff("exact", "plain", ("acc_drop", "acc_rise"))
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def default_rows(args, base, only) -> list[dict]:
    """The rows of the demo model (lenet5 on digits) and of a resnet18 of width 16 on 32x32 digits."""
    snaps = []
    train(base, callbacks=[lambda c: snaps.append({k: v.clone() for k, v in c.model.state_dict().items()})])
    ds = load_dataset("digits")
    lenet = create_model("lenet5", ds.image_shape, 10)
    lenet.load_state_dict(snaps[-1])
    rows = [speed_row("lenet5 / digits (train set)", lenet, ds.x_train, ds.y_train, iters=10, batch_size=256,
                      device=args.device, only=only)]
    xr, yr = resnet_set(32 if args.quick else args.resnet_samples)
    torch.manual_seed(0)
    resnet = create_model("resnet18", (3, 32, 32), 10, width=16)
    opt = torch.optim.SGD(resnet.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):  # a few steps so the model is not at its random init
        opt.zero_grad()
        F.cross_entropy(resnet(xr), yr).backward()
        opt.step()
    rows.append(speed_row("resnet18(w16) / digits@32x32", resnet, xr, yr, iters=2 if args.quick else 10, batch_size=32,
                          device=args.device, only=only))
    return rows


def write_results(path, table: str, args) -> None:
    """The table with what produced it: command, code revision, device, seeds, date."""
    import datetime
    import platform
    from ulviz.core.provenance import code_revision
    rev = (code_revision()[0] or "unknown")[:12]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else platform.processor()
    with open(path, "w") as f:
        f.write(f"# SAL speed on {args.device} ({dev})\n\n"
                f"- command: `{' '.join(sys.argv)}`\n- revision: {rev or 'unknown'}\n"
                f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}\n"
                f"- torch {torch.__version__}, {torch.get_num_threads()} CPU threads; seeds: torch.manual_seed(0) "
                f"before each model, data in stored order (no shuffle)\n"
                f"- columns: *_s seconds, *_gib peak CUDA memory over the start, *_speedup over the plain loop, "
                f"floor_* = measured forward+backward (fwd_bwd_ms) x the passes the search must make, without "
                f"and with shared prefixes\n\n```\n{table}\n```\n")


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
    p.add_argument("--cifar-models", default="lenet5,cnn,resnet18:16,resnet18",
                   help="comma-separated NAME[:WIDTH] of the CIFAR rows (default: the issue 26 table)")
    p.add_argument("--paths", default=",".join(PATHS), help="the paths to time (the plain loop is the speed-ups' base)")
    p.add_argument("--cifar-only", action="store_true", help="only the CIFAR rows (with --cifar)")
    p.add_argument("--results", help="also write the speed table to this markdown file (command, revision, date)")
    args = p.parse_args()
    only = tuple(args.paths.split(","))
    if set(only) - set(PATHS):
        p.error(f"--paths takes some of {', '.join(PATHS)}, not {', '.join(sorted(set(only) - set(PATHS)))}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    epochs = args.epochs or (4 if args.quick else 15)
    import pandas as pd
    pd.set_option("display.width", 200)

    # --- speed on one trained model per case --------------------------------------------------
    rows = []
    base = RunConfig(name="clean", data=DataConfig("digits"), model=ModelConfig("lenet5"),
                     train=TrainConfig(epochs=epochs, device="cpu"))
    if not (args.cifar and args.cifar_only):
        rows += default_rows(args, base, only)
    if args.cifar:
        cifar = load_dataset(DataConfig("cifar10", data_dir=args.cifar, train_limit=args.cifar_samples))
        for spec in args.cifar_models.split(","):
            name, _, width = spec.partition(":")
            torch.manual_seed(0)
            net = create_model(name, cifar.image_shape, cifar.num_classes, width=int(width) if width else None)
            opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            for i in range(0, len(cifar.x_train), 128):  # one epoch, so the model is not at its init
                opt.zero_grad()
                F.cross_entropy(net(cifar.x_train[i:i + 128]), cifar.y_train[i:i + 128]).backward()
                opt.step()
            rows.append(speed_row(f"{name}{'(w' + width + ')' if width else ''} / cifar10 ({len(cifar.x_train)} images)",
                                  net.eval(), cifar.x_train, cifar.y_train, iters=2 if args.quick else 10,
                                  batch_size=128, device=args.device, only=only))
    table = pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}")
    print(f"\n== SAL speed on {args.device} (seconds; speed-ups over the plain per-layer loop; "
          f"floor = measured forward+backward x the passes the search must make) ==")
    print(table, flush=True)
    if args.results:
        write_results(args.results, table, args)
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
        from ulviz.protect.poisons import make_poison
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
