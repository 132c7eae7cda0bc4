"""Methods that optimise the perturbation against a surrogate model: em, rem, tap.

All three are L-inf bounded (8/255 by default) and optimise with signed-gradient (PGD) steps.
The surrogate is a registry model (the small batch-norm `cnn` by default, which fits in a few rounds; the papers use
ResNet-18 on CIFAR: pass surrogate="resnet18"). Differentiable augmentations and expectation over
transformations used by some of the papers are left out; everything else follows them.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..models import create_model
from ..training import evaluate
from . import Poison, register

_SURROGATE = {"surrogate": "cnn", "surrogate_lr": 0.1, "batch_size": 256}


def _surrogate(dataset, params, ctx, g):
    """A fresh surrogate, initialised from the method's generator (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        model = create_model(params["surrogate"], dataset.image_shape, dataset.num_classes)
    model = model.to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=params["surrogate_lr"], momentum=0.9, weight_decay=5e-4)
    return model, opt


def _pgd(model, x, y, delta, eps, step, steps, *, minimize=True, inner=None):
    """`steps` signed-gradient steps on `delta` (same shape as x) for the loss of (x + delta, y),
    descending if `minimize`; `inner(x_adv)` optionally adds a worst-case perturbation first (REM)."""
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        xp = (x + delta).clamp(0, 1)
        if inner is not None:
            xp = xp + inner(xp.detach())
        loss = F.cross_entropy(model(xp), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = delta - step * grad.sign() if minimize else delta + step * grad.sign()
        delta = delta.clamp(-eps, eps)
    return delta.detach()


def _rho(model, rho_a, steps):
    """REM's inner maximisation: a PGD attack of radius rho_a on the (already protected) input."""
    def attack(xp):
        rho = torch.zeros_like(xp)
        for _ in range(steps):
            rho = rho.detach().requires_grad_(True)
            loss = F.cross_entropy(model((xp + rho).clamp(0, 1)), attack.y)
            (grad,) = torch.autograd.grad(loss, rho)
            rho = (rho + 2.5 * rho_a / steps * grad.sign()).clamp(-rho_a, rho_a)
        return ((xp + rho).clamp(0, 1) - xp).detach()
    return attack


def _error_minimizing(dataset, indices, g, params, ctx, robust: bool) -> Poison:
    """EM (robust=False) or REM (robust=True): alternate surrogate training on the protected data
    with updates of the noise that *minimise* the surrogate's loss, until its training error on
    the protected data falls below `stop_error` or `max_rounds` end."""
    dev = ctx.device
    x, y = dataset.x_train.to(dev), dataset.y_train.to(dev)
    eps, step, classwise = float(params["eps"]), float(params["step"]), params["mode"] == "class"
    n_patterns = dataset.num_classes if classwise else len(x)
    delta = ((torch.rand(n_patterns, *dataset.image_shape, generator=g) * 2 - 1) * eps).to(dev)
    model, opt = _surrogate(dataset, params, ctx, g)
    bs = int(params["batch_size"])
    rho_attack = _rho(model, float(params["rho"]), int(params["rho_steps"])) if robust else None
    pattern_of = y if classwise else torch.arange(len(x), device=dev)
    rounds, err = 0, 1.0
    bar = _bar(ctx, params["max_rounds"], "rem" if robust else "em")
    for rounds in range(1, int(params["max_rounds"]) + 1):
        model.train()
        for _ in range(int(params["train_steps"])):  # (1) the surrogate learns the protected data
            b = torch.randint(0, len(x), (bs,), generator=g).to(dev)
            xb = (x[b] + delta[pattern_of[b]]).clamp(0, 1)
            if robust:
                model.eval()
                rho_attack.y = y[b]
                xb = xb + rho_attack(xb)
                model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), y[b]).backward()
            opt.step()
        model.eval()  # (2) the noise makes the data easier still for that surrogate
        if classwise:
            delta = _classwise_update(model, x, y, delta, eps, step, int(params["pgd_steps"]), bs, rho_attack)
        else:
            for i in range(0, len(x), bs):
                sl = slice(i, i + bs)
                if robust:
                    rho_attack.y = y[sl]
                delta[sl] = _pgd(model, x[sl], y[sl], delta[sl], eps, step, int(params["pgd_steps"]), inner=rho_attack)
        protected = (x + delta[pattern_of]).clamp(0, 1)
        err = 1 - evaluate(model, protected, y, 512, dev)[1]  # (3) stop once the surrogate fits it
        if bar:
            bar.update(1)
            bar.set_postfix(train_error=f"{err:.4f}")
        if err < float(params["stop_error"]):
            break
    if bar:
        bar.close()
    out = dataset.x_train.clone()
    out[indices] = (dataset.x_train[indices] + delta[pattern_of.cpu()[indices]].cpu()).clamp(0, 1)
    return Poison(out, indices, {"rounds": rounds, "surrogate_train_error": err})


def _classwise_update(model, x, y, delta, eps, step, steps, bs, rho_attack):
    """Class-wise noise: each step moves a class's pattern by the sign of the loss gradient summed
    over all of that class's samples."""
    for _ in range(steps):
        total = torch.zeros_like(delta)
        for i in range(0, len(x), bs):
            d = delta[y[i:i + bs]].detach().requires_grad_(True)
            xp = (x[i:i + bs] + d).clamp(0, 1)
            if rho_attack is not None:
                rho_attack.y = y[i:i + bs]
                xp = xp + rho_attack(xp.detach())
            loss = F.cross_entropy(model(xp), y[i:i + bs], reduction="sum")
            (grad,) = torch.autograd.grad(loss, d)
            total.index_add_(0, y[i:i + bs], grad)
        delta = (delta - step * total.sign()).clamp(-eps, eps)
    return delta.detach()


def _bar(ctx, total, desc):
    if not ctx.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=int(total), desc=desc, unit="round")


_EM_DEFAULTS = {"eps": 8 / 255, "step": 0.8 / 255, "pgd_steps": 20, "train_steps": 10, "stop_error": 0.01,
                "max_rounds": 40, "mode": "sample", **_SURROGATE}


@register("em", defaults=_EM_DEFAULTS, budget="linf", budget_param="eps",
          summary="Huang et al., ICLR 2021: error-minimizing noise (min-min with a surrogate)")
def em(dataset, indices, g, params, ctx) -> Poison:
    return _error_minimizing(dataset, indices, g, params, ctx, robust=False)


@register("rem", defaults={**_EM_DEFAULTS, "rho": 4 / 255, "rho_steps": 5, "max_rounds": 20}, budget="linf",
          budget_param="eps", summary="Fu et al., ICLR 2022: robust error-minimizing noise (min-min-max)")
def rem(dataset, indices, g, params, ctx) -> Poison:
    return _error_minimizing(dataset, indices, g, params, ctx, robust=True)


@register("tap", defaults={"eps": 8 / 255, "steps": 50, "step": 1 / 255, "train_epochs": 20, **_SURROGATE},
          budget="linf", budget_param="eps",
          summary="Fowl et al., NeurIPS 2021: targeted adversarial examples (class y -> y+1) as poisons")
def tap(dataset, indices, g, params, ctx) -> Poison:
    """Train the surrogate on the clean data, then push every protected image toward the next class
    (a fixed permutation of the labels) with a targeted PGD attack."""
    dev = ctx.device
    x, y = dataset.x_train.to(dev), dataset.y_train.to(dev)
    model, opt = _surrogate(dataset, params, ctx, g)
    bs = int(params["batch_size"])
    bar = _bar(ctx, params["train_epochs"], "tap: crafting model")
    for _ in range(int(params["train_epochs"])):
        model.train()
        order = torch.randperm(len(x), generator=g).to(dev)
        for i in range(0, len(x), bs):
            b = order[i:i + bs]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    model.eval()
    clean_acc = evaluate(model, x, y, 512, dev)[1]
    target = (y + 1) % dataset.num_classes
    xi = x[indices.to(dev)]
    ti = target[indices.to(dev)]
    delta = torch.zeros_like(xi)
    for i in range(0, len(xi), bs):
        sl = slice(i, i + bs)
        delta[sl] = _pgd(model, xi[sl], ti[sl], delta[sl], float(params["eps"]), float(params["step"]), int(params["steps"]))
    out = dataset.x_train.clone()
    adv = (xi + delta).clamp(0, 1)
    out[indices] = adv.cpu()
    hit = (model(adv).argmax(1) == ti).float().mean().item() if len(xi) else 0.0
    return Poison(out, indices, {"crafting_model_train_acc": clean_acc, "targeted_success": hit})
