"""Methods that optimise the perturbation against a surrogate model: em, rem, tap.

All three are L-inf bounded (8/255 by default) and move the perturbation with signed-gradient
(PGD) steps taken, as in the originals, on the *perturbed image*: the gradient is that of the loss
with respect to x' = clamp(x + delta, 0, 1), x' moves, and delta = clamp(x' - x, -eps, eps). A
pixel at 0 whose delta went negative therefore still moves when the gradient asks it to (a
gradient through `clamp` with respect to delta would be 0 there forever).

The surrogate is a registry model. The originals use ResNet-18 (`surrogate=resnet18`, right on a
GPU); the default is the small batch-norm `cnn`, which a CPU can afford (`surrogate_width` sets its
width). Where an original trains its surrogate with augmentation (REM, TAP's crafting model and
its attack) so does ulviz, with the same crop-and-flip as the paper recipe (`augment`, default:
crop_flip on natural-image sets, none on digit sets); EM's original generates without augmentation.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ...core.errors import UlvizError
from ...data.recipes import NATURAL_IMAGE_SETS, augment_batch
from ...models.registry import create_model
from ...models.steps import evaluate, train_step
from .registry import Poison, register

_SURROGATE = {"surrogate": "cnn", "surrogate_width": None, "surrogate_lr": 0.1}
_SURROGATE_KINDS = {"surrogate_width": int}


def _surrogate(dataset, params, ctx, g, nesterov: bool = False):
    """A fresh surrogate, initialised from the method's generator (the global RNG is left alone),
    and its SGD (momentum 0.9, weight decay 5e-4, as every original's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        model = create_model(params["surrogate"], dataset.image_shape, dataset.num_classes, params["surrogate_width"])
    model = model.to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=params["surrogate_lr"], momentum=0.9, weight_decay=5e-4,
                          nesterov=nesterov)
    return model, opt


def _augment_kind(dataset, params) -> str:
    """The surrogate's augmentation: the parameter, else crop_flip on natural images, none elsewhere."""
    if params.get("augment") is None:
        params["augment"] = "crop_flip" if dataset.name in NATURAL_IMAGE_SETS else "none"
    return params["augment"]


def _batches(n: int, bs: int, g: torch.Generator, drop_last: bool = True):
    """An endless stream of shuffled minibatch indices, epoch after epoch (a restarting loader)."""
    while True:
        order = torch.randperm(n, generator=g)
        stop = n - n % bs if drop_last and n >= bs else n
        for i in range(0, stop, bs):
            yield order[i:i + bs]


def pgd_on_image(model, x, target, delta, eps, step, steps, *, descend=True, transform=None):
    """`steps` signed-gradient steps on the perturbed image x' = clamp(x + delta, 0, 1) for the
    cross-entropy of model(transform(x')) against `target` (descending when `descend`); after each
    step delta = clamp(x' - x, -eps, eps). Returns the final delta (eps-bounded; the image it
    makes is clamp(x + delta, 0, 1)). `transform` is a differentiable augmentation, fresh each step."""
    xp = (x + delta).clamp(0, 1)
    for _ in range(steps):
        xp = xp.detach().requires_grad_(True)
        loss = F.cross_entropy(model(transform(xp) if transform else xp), target)
        (grad,) = torch.autograd.grad(loss, xp)
        xp = xp - step * grad.sign() if descend else xp + step * grad.sign()
        delta = (xp - x).clamp(-eps, eps)
        xp = (x + delta).clamp(0, 1)
    return delta.detach()


# -- EM ------------------------------------------------------------------------------------

def _error_minimizing(dataset, indices, g, params, ctx, classwise: bool) -> Poison:
    """Huang et al.'s min-min loop, from zero noise: repeat (1) `train_fraction` of an epoch of
    surrogate training on the noisy data (minibatches of `batch_size`, gradient norm clipped at
    5), (2) a pass of error-minimizing steps on the noise (`_samplewise_pass` or
    `_classwise_pass`), (3) stop once the surrogate's error on the noisy data it was measured on
    (every sample, or the class-wise subset; eval mode) is below `stop_error`."""
    dev = ctx.device
    x, y = dataset.x_train.to(dev), dataset.y_train.to(dev)
    noise = torch.zeros(dataset.num_classes if classwise else len(x), *dataset.image_shape, device=dev)
    pattern_of = y if classwise else torch.arange(len(x), device=dev)  # which noise each sample wears
    model, opt = _surrogate(dataset, params, ctx, g)
    bs = int(params["batch_size"])
    per_round = max(1, round(float(params["train_fraction"]) * len(x) / bs))
    stream = _batches(len(x), bs, g)
    measured = (_stratified_subset(dataset.y_train, float(params["subset"]), g).to(dev) if classwise
                else torch.arange(len(x), device=dev))
    rounds, err = 0, 1.0
    bar = _bar(ctx, params["max_rounds"], "em (class-wise)" if classwise else "em")
    for rounds in range(1, int(params["max_rounds"]) + 1):
        for _ in range(per_round):  # (1) the surrogate learns the noisy data a little
            b = next(stream).to(dev)
            train_step(model, opt, (x[b] + noise[pattern_of[b]]).clamp(0, 1), y[b], grad_clip=5.0)
        model.eval()  # (2) the noise makes the data easier still for it
        (_classwise_pass if classwise else _samplewise_pass)(model, x, y, noise, measured, params, g)
        xm = (x[measured] + noise[pattern_of[measured]]).clamp(0, 1)
        err = 1 - evaluate(model, xm, y[measured], 512, dev)[1]  # (3)
        if bar:
            bar.update(1)
            bar.set_postfix(train_error=f"{err:.4f}")
        if err < float(params["stop_error"]):
            break
    if bar:
        bar.close()
    out = dataset.x_train.clone()
    wears = pattern_of.cpu()[indices]
    out[indices] = (dataset.x_train[indices] + noise.cpu()[wears]).clamp(0, 1)
    info = {"rounds": rounds, "surrogate_train_error": err, "train_steps_per_round": per_round}
    if classwise:  # K patterns say it all: what a run file stores
        return Poison(out, indices, info, noise.cpu().clone(), wears.clone())
    return Poison(out, indices, info)


def _samplewise_pass(model, x, y, noise, measured, params, g) -> None:
    """Every sample's noise takes `pgd_steps` (20) steps, in unshuffled batches (in place)."""
    bs = int(params["batch_size"])
    for i in range(0, len(x), bs):
        sl = slice(i, i + bs)
        noise[sl] = pgd_on_image(model, x[sl], y[sl], noise[sl], float(params["eps"]), float(params["step"]),
                                 int(params["pgd_steps"]))


def _classwise_pass(model, x, y, noise, subset, params, g) -> None:
    """One pass over the subset in shuffled batches: each sample takes `pgd_steps` (1) steps from
    its class's pattern, and each class's pattern becomes the mean of its samples' results, so it
    moves by the mean of their signed steps (in place)."""
    bs, eps = int(params["batch_size"]), float(params["eps"])
    order = subset[torch.randperm(len(subset), generator=g).to(subset.device)]
    for i in range(0, len(order), bs):
        b = order[i:i + bs]
        moved = pgd_on_image(model, x[b], y[b], noise[y[b]], eps, float(params["step"]), int(params["pgd_steps"]))
        for cls in y[b].unique():
            noise[cls] = moved[y[b] == cls].mean(0).clamp(-eps, eps)


def _stratified_subset(y: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """`fraction` of each class's samples, chosen by `g` (sorted indices)."""
    picks = []
    for k in y.unique():
        members = (y == k).nonzero().flatten()
        take = max(1, round(fraction * len(members)))
        picks.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(picks).sort().values


_EM_DEFAULTS = {"eps": 8 / 255, "step": 0.8 / 255, "pgd_steps": None, "stop_error": None, "train_fraction": 0.1,
                "max_rounds": 100, "mode": "sample", "subset": 0.2, "batch_size": 512, **_SURROGATE}


@register("em", defaults=_EM_DEFAULTS, budget="linf", budget_param="eps",
          kinds={"pgd_steps": int, "stop_error": float, **_SURROGATE_KINDS},
          summary="Huang et al., ICLR 2021: error-minimizing noise (min-min with a surrogate)", trained=True)
def em(dataset, indices, g, params, ctx) -> Poison:
    """Error-minimizing noise, as HanxunH/Unlearnable-Examples' perturbation.py with the README's
    commands: noise from zero, 0.8/255 steps in an 8/255 ball, batches of 512, surrogate SGD lr 0.1
    with gradient clipping at 5, 10 training steps per round on 50,000 images (`train_fraction` =
    0.1 epoch here, whatever the set's size); sample-wise 20 steps a round until the error is
    under 0.01, class-wise 1 step a batch on a 20% subset until under 0.1 (`pgd_steps`,
    `stop_error` default by mode). Differences: the surrogate (see the module docstring), and the
    surrogate trains on clamped noisy images (the original adds the noise without clamping)."""
    classwise = params["mode"] == "class"
    if params["mode"] not in ("sample", "class"):
        raise UlvizError(f"em: mode must be 'sample' or 'class', got {params['mode']!r}")
    if params["pgd_steps"] is None:
        params["pgd_steps"] = 1 if classwise else 20
    if params["stop_error"] is None:
        params["stop_error"] = 0.1 if classwise else 0.01
    return _error_minimizing(dataset, indices, g, params, ctx, classwise)


# -- REM -----------------------------------------------------------------------------------

def _attack(model, x, y, rho, step, steps, g):
    """The adversary REM trains against: PGD of radius `rho` from a uniform random start,
    ascending the loss; returns the adversarial images (in [0, 1])."""
    r = (torch.rand(x.shape, generator=g) * 2 - 1).to(x.device) * rho
    return (x + pgd_on_image(model, x, y, r, rho, step, steps, descend=False)).clamp(0, 1)


def _rem_defend(model, x, y, params, aug, g):
    """REM's defensive noise for one batch, from a fresh uniform start: `pgd_steps` steps, each
    minimizing the loss of the *adversarial* images over `samples` random augmentations of the
    protected image (expectation over transformations); the adversarial offset is held fixed
    when differentiating, as in the original."""
    eps, step = float(params["eps"]), float(params["step"])
    delta = (torch.rand(x.shape, generator=g) * 2 - 1).to(x.device) * eps
    for _ in range(int(params["pgd_steps"])):
        xp = (x + delta).clamp(0, 1).requires_grad_(True)
        total = torch.zeros_like(x)
        for _ in range(int(params["samples"])):
            def_x = augment_batch(xp, aug, g)
            adv = _attack(model, def_x.detach(), y, float(params["rho"]), float(params["rho_step"]),
                          int(params["rho_steps"]), g)
            adv = adv.detach().requires_grad_(True)
            (gd,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
            (grad,) = torch.autograd.grad((def_x * gd).sum(), xp)  # back through the augmentation
            total += grad
        xp = xp.detach() - step * total.sign()
        delta = (xp - x).clamp(-eps, eps)
    return delta.detach()


@register("rem", defaults={"eps": 8 / 255, "step": 1.6 / 255, "pgd_steps": 10, "rho": 4 / 255, "rho_step": 0.8 / 255,
                           "rho_steps": 10, "samples": 5, "train_epochs": 12.8, "batch_size": 128, "augment": None,
                           **_SURROGATE},
          budget="linf", budget_param="eps", kinds={"augment": str, **_SURROGATE_KINDS},
          summary="Fu et al., ICLR 2022: robust error-minimizing noise (min-min-max)", trained=True)
def rem(dataset, indices, g, params, ctx) -> Poison:
    """As fshp971/robust-unlearnable-examples' generate_robust_em.py with its CIFAR-10 command:
    a fixed budget of surrogate steps (5,000 batches of 128 on 50,000 images = `train_epochs`
    12.8 of the set, the lr x0.1 after every 40% of it); each step draws the batch's defensive
    noise afresh (`_rem_defend`: 10 steps of 1.6/255 in the 8/255 ball, 5 augmentations, inner
    PGD of 4/255 in 10 steps of 0.8/255), then trains the surrogate on adversarial examples
    (radius 4/255) of the augmented protected batch; a final pass regenerates every sample's noise
    with the trained surrogate. No error-based stop. The full budget costs about 550 forward-
    backward passes per sample per step: on a CPU pass smaller `train_epochs`, `samples`,
    `pgd_steps`, `rho_steps` (the benchmark's settings are in the README). Difference: the
    gradient is taken at the clamped protected image (see the module docstring)."""
    dev = ctx.device
    x, y = dataset.x_train.to(dev), dataset.y_train.to(dev)
    aug = _augment_kind(dataset, params)
    model, opt = _surrogate(dataset, params, ctx, g)
    bs = min(int(params["batch_size"]), len(x))
    total = max(1, round(float(params["train_epochs"]) * len(x) / bs))
    decay_every = max(1, round(0.4 * total))
    stream = _batches(len(x), bs, g)
    noise = torch.zeros_like(x)
    bar = _bar(ctx, total, "rem")
    for t in range(total):
        for group in opt.param_groups:
            group["lr"] = float(params["surrogate_lr"]) * 0.1 ** (t // decay_every)
        b = next(stream).to(dev)
        model.eval()
        noise[b] = _rem_defend(model, x[b], y[b], params, aug, g)
        def_x = augment_batch((x[b] + noise[b]).clamp(0, 1), aug, g)
        adv = _attack(model, def_x, y[b], float(params["rho"]), float(params["rho_step"]), int(params["rho_steps"]), g)
        train_step(model, opt, adv, y[b])
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    model.eval()
    for i in range(0, len(x), bs):  # the final regeneration with the trained surrogate
        sl = slice(i, i + bs)
        noise[sl] = _rem_defend(model, x[sl], y[sl], params, aug, g)
    clean_acc = evaluate(model, x, y, 512, dev)[1]
    out = dataset.x_train.clone()
    out[indices] = (dataset.x_train[indices] + noise.cpu()[indices]).clamp(0, 1)
    return Poison(out, indices, {"train_steps": total, "surrogate_clean_train_acc": clean_acc})


# -- TAP -----------------------------------------------------------------------------------

@register("tap", defaults={"eps": 8 / 255, "steps": 250, "step": 0.4 / 255, "restarts": 1, "train_epochs": 40,
                           "batch_size": 128, "attack_batch": 512, "augment": None, **_SURROGATE},
          budget="linf", budget_param="eps", kinds={"augment": str, **_SURROGATE_KINDS},
          summary="Fowl et al., NeurIPS 2021: targeted adversarial examples (class y -> y+1) as poisons", trained=True)
def tap(dataset, indices, g, params, ctx) -> Poison:
    """As lhfowl/adversarial_poisons with its README command: a crafting model trained from
    scratch on the clean data (`train_epochs` 40, batches of 128, Nesterov SGD lr 0.1, x0.1 at
    epochs 40//2.667, 40//1.6, 40//1.142, augmented), then for every protected image 250 signed-
    gradient steps of 0.05 eps (0.4/255) from a Gaussian start, descending the cross-entropy toward
    the class (y + 1) mod K through a fresh random augmentation each step, in the 8/255 ball; with
    `restarts` > 1 (the original uses 8) each sample keeps the restart of lowest target loss.
    Differences: the augmentation is the recipe's integer crop-and-flip (the original shifts by a
    bilinear, sub-pixel translation), and restarts are chosen per sample, not per poison set."""
    dev = ctx.device
    x, y = dataset.x_train.to(dev), dataset.y_train.to(dev)
    aug = _augment_kind(dataset, params)
    model, opt = _surrogate(dataset, params, ctx, g, nesterov=True)
    bs = int(params["batch_size"])
    epochs = int(params["train_epochs"])
    milestones = [int(epochs // d) for d in (2.667, 1.6, 1.142)]
    bar = _bar(ctx, epochs, "tap: crafting model")
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = float(params["surrogate_lr"]) * 0.1 ** sum(epoch >= m for m in milestones)
        order = torch.randperm(len(x), generator=g).to(dev)
        for i in range(0, len(x), bs):
            b = order[i:i + bs]
            train_step(model, opt, augment_batch(x[b], aug, g), y[b])
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    model.eval()
    clean_acc = evaluate(model, x, y, 512, dev)[1]
    target = (y + 1) % dataset.num_classes
    idx = indices.to(dev)
    xi, ti = x[idx], target[idx]
    eps, step, steps = float(params["eps"]), float(params["step"]), int(params["steps"])
    transform = (lambda t: augment_batch(t, aug, g)) if aug != "none" else None
    delta = torch.zeros_like(xi)
    best = torch.full((len(xi),), math.inf, device=dev)
    ab = int(params["attack_batch"])
    for _ in range(int(params["restarts"])):
        for i in range(0, len(xi), ab):
            sl = slice(i, i + ab)
            start = (torch.randn(xi[sl].shape, generator=g).to(dev) * eps).clamp(-eps, eps)
            d = pgd_on_image(model, xi[sl], ti[sl], start, eps, step, steps, transform=transform)
            with torch.no_grad():
                loss = F.cross_entropy(model((xi[sl] + d).clamp(0, 1)), ti[sl], reduction="none")
            better = loss < best[sl]
            delta[sl][better] = d[better]
            best[sl] = torch.minimum(best[sl], loss)
    out = dataset.x_train.clone()
    adv = (xi + delta).clamp(0, 1)
    out[indices] = adv.cpu()
    with torch.no_grad():
        hit = (model(adv).argmax(1) == ti).float().mean().item() if len(xi) else 0.0
    return Poison(out, indices, {"crafting_model_train_acc": clean_acc, "targeted_success": hit})


def _bar(ctx, total, desc):
    if not ctx.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=int(total), desc=desc, unit="step" if desc == "rem" else "round")
