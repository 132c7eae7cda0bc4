"""The commands that make and inspect runs: train, info, list, verify, poison."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.config import DataConfig, ModelConfig, PoisonConfig, RunConfig, TrainConfig, check_numbers
from ..core.errors import UlvizError
from ..data.datasets import list_datasets
from ..data.recipes import AUGMENTATIONS, apply_recipe, default_recipe, list_recipes
from ..data.tasks import list_tasks
from ..models.registry import list_models
from ..protect.defenses import list_defenses, parse_defense
from ..protect.poisons import list_budgets, list_methods
from .common import add_sal_options, key_value, sal_config_from


def add_train(sub) -> None:
    """`ulviz train`: a run file from a config (or `--resume` an interrupted one)."""
    t = sub.add_parser("train", help="train a model (optionally on protected data) into a run file")
    d, tc = DataConfig(), TrainConfig()
    t.add_argument("--out", help="run file to write (.h5)")
    t.add_argument("--resume", metavar="RUN.h5", help="continue an interrupted run file from its last finished epoch")
    t.add_argument("--name", help="run label (default: the poison method)")
    t.add_argument("--dataset", default=d.name, choices=list_datasets())
    t.add_argument("--data-dir", help="directory (or .npz file) for datasets read from local files")
    t.add_argument("--allow-pickle", action="store_true", help="allow the CIFAR python (pickle) layout")
    t.add_argument("--train-limit", type=int, help="use only the first N training samples")
    t.add_argument("--test-limit", type=int, help="use only the first N test samples")
    t.add_argument("--model", default=ModelConfig().name, choices=list_models())
    t.add_argument("--width", type=int, help="model base width")
    t.add_argument("--poison", default="clean", choices=list_methods(), help="unlearnable method")
    t.add_argument("--poison-ratio", type=float, default=1.0, help="fraction of training samples protected")
    t.add_argument("--poison-seed", type=int, default=0)
    t.add_argument("--poison-param", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. eps=0.0314)")
    t.add_argument("--budget", default="standard", choices=list_budgets(),
                   help="budget convention: the papers' (standard), scaled to the image's energy, or MNIST's L-inf 0.3")
    t.add_argument("--recipe", choices=list_recipes(),
                   help="training recipe (default: paper on cifar10/cifar100, quick elsewhere); the flags below override it")
    t.add_argument("--optimizer", choices=["sgd", "adam"], help="default: the recipe's")
    t.add_argument("--lr", type=float, help="default: the recipe's")
    t.add_argument("--momentum", type=float, help="default: the recipe's")
    t.add_argument("--weight-decay", type=float, help="default: the recipe's")
    t.add_argument("--schedule", choices=["constant", "cosine", "step"], help="default: the recipe's")
    t.add_argument("--batch-size", type=int, help="default: the recipe's")
    t.add_argument("--augment", choices=list(AUGMENTATIONS), help="training augmentation (default: the recipe's)")
    t.add_argument("--defense", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="a trainer's defense, repeatable, applied in order: jpeg, grayscale, iss (once, on the "
                        "training images), cutout, mixup, cutmix (on every batch); e.g. --defense jpeg:quality=10")
    t.add_argument("--task", default=tc.task, choices=list_tasks(),
                   help="what is learned from the (maybe protected) images: classify (the default), rotation "
                        "(4-way rotation prediction), segment (foreground masks of grayscale digits; model fcn)")
    t.add_argument("--epochs", type=int, default=tc.epochs)
    t.add_argument("--seed", type=int, default=tc.seed)
    t.add_argument("--device", default=tc.device, help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--sal", default="fast", choices=["exact", "fast", "none"],
                   help="per-layer SAL after every epoch, so the run reaches the SAL and UD pages. Default, as in "
                        "the dashboard's form: fast (the search linearized into a few projected gradient steps "
                        "per layer, on the first 1024 samples: cheap on any dataset). exact: the paper's "
                        "10-round search over the whole split, about 20 passes per layer per epoch, slow on "
                        "natural images (limit it with --sal-subset, or compute it afterwards on chosen epochs "
                        "with `ulviz sal`). Compare UD only between runs of one estimator")
    add_sal_options(t)
    t.add_argument("--overwrite", action="store_true", help="replace an existing run file")
    t.add_argument("--config", help="a RunConfig as JSON (a file); replaces every other training option")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def add_info(sub) -> None:
    """`ulviz info`: a run file's config, provenance and metrics."""
    i = sub.add_parser("info", help="print a run file's config and metrics")
    i.add_argument("run", help="run file (.h5)")
    i.add_argument("--json", action="store_true", help="machine-readable output")


def add_list(sub) -> None:
    """`ulviz list`: what the registries hold."""
    sub.add_parser("list", help="list datasets, models and unlearnable methods")


def add_verify(sub) -> None:
    """`ulviz verify`: does a run file reproduce here."""
    ve = sub.add_parser("verify", help="check a run file's input digests and retrain its first epochs to compare "
                                       "(exit 0: all matches, 1: something differs, 2: bad input)")
    ve.add_argument("run", help="run file (.h5)")
    ve.add_argument("--epochs", type=int, default=1, help="epochs to retrain and compare (default 1)")
    ve.add_argument("--tolerance", type=float, default=0.0,
                    help="largest |difference| of a metric or weight counted as equal (default 0: exact)")
    ve.add_argument("--threads", type=int, help="CPU threads to retrain on (default: the count the file recorded)")


def add_poison(sub) -> None:
    """`ulviz poison`: generate (and cache) a protected training set."""
    po = sub.add_parser("poison", help="generate (and cache) a protected training set")
    po.add_argument("--dataset", default=DataConfig().name, choices=list_datasets())
    po.add_argument("--data-dir")
    po.add_argument("--allow-pickle", action="store_true")
    po.add_argument("--train-limit", type=int)
    po.add_argument("--method", required=True, choices=list_methods())
    po.add_argument("--ratio", type=float, default=1.0)
    po.add_argument("--seed", type=int, default=0)
    po.add_argument("--param", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    po.add_argument("--budget", default="standard", choices=list_budgets())
    po.add_argument("--device", default="auto")
    po.add_argument("--out", help="also save the protected training set as .npz (x_train, y_train, indices)")
    po.add_argument("--quiet", action="store_true")


def _train(args) -> int:
    from ..training.loop import resume, train

    if args.resume:
        return _report(resume(args.resume, progress=not args.quiet), args.resume)
    if not args.out:
        raise UlvizError("train needs --out RUN.h5 (or --resume RUN.h5)")
    config = _config_file(args.config) if args.config else RunConfig(
        name=args.name or args.poison,
        data=DataConfig(args.dataset, args.data_dir, args.allow_pickle, args.train_limit, args.test_limit),
        poison=PoisonConfig(args.poison, args.poison_ratio, args.poison_seed, dict(args.poison_param), args.budget),
        model=ModelConfig(args.model, args.width),
        train=apply_recipe(TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device, task=args.task,
                                       defenses=[parse_defense(d) for d in args.defense]),
                           args.recipe or default_recipe(args.dataset), args.dataset,
                           optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay, schedule=args.schedule, batch_size=args.batch_size,
                           augment=args.augment),
        sal=sal_config_from(args, args.sal),
    )
    result = train(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    return _report(result, args.out)


def _config_file(path: str) -> RunConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UlvizError(f"{path}: cannot read the config ({e.strerror})") from None
    return RunConfig.from_json(text)


def _report(result, out) -> int:
    last = result.history[-1]
    print(f"{result.status}: {out}  epoch {last['epoch']}  train_acc {last['train_acc']:.4f}  "
          f"test_acc {last['test_acc']:.4f}")
    return 0 if result.status == "complete" else 3


def _info(args) -> int:
    from ..store.runs import open_run

    run = open_run(args.run)
    if args.json:
        print(json.dumps({"path": str(run.path), "status": run.status, "message": run.message,
                          "config": run.config.to_dict(), "layers": run.layer_names,
                          "metrics": run.metrics.to_dict(orient="list"), "provenance": run.provenance or None,
                          "stored_protection": run.protection_info or None}))
        return 0
    print(f"run      {run.path}")
    print(f"name     {run.name}   status {run.status}{'  (' + run.message + ')' if run.message else ''}")
    print(f"created  {run.created} by ulviz {run.ulviz_version}")
    c = run.config
    print(f"data     {c.data.name}  model {c.model.name}  poison {c.poison.method} (ratio {c.poison.ratio}, "
          f"budget {c.poison.budget})")
    print(f"train    recipe {c.train.recipe}: {c.train.optimizer} lr {c.train.lr} {c.train.schedule}  "
          f"batch {c.train.batch_size}  augment {c.train.augment}  epochs {run.epochs_done}/{c.train.epochs}  "
          f"seed {c.train.seed}")
    print(f"task     {c.train.task}   defenses {', '.join(d['name'] + (':' + ','.join(f'{k}={v}' for k, v in d['params'].items()) if d['params'] else '') for d in c.train.defenses) or 'none'}")
    print(f"layers   {', '.join(run.layer_names)}")
    print(f"SAL      {len(run.sal_epochs)} epoch(s)")
    for line in _provenance_lines(run):
        print(line)
    print(run.metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _provenance_lines(run) -> list[str]:
    """What the run file records of how it was made; "not recorded" for files older than that."""
    env, digests = run.provenance.get("environment"), run.provenance.get("digests")
    if env is None:
        return ["made with  not recorded (written before ulviz recorded provenance)"]
    revision = env.get("code_revision")
    code = "not a git checkout" if revision is None else f"{revision[:12]}{' (dirty tree)' if env.get('code_dirty') else ''}"
    stored = run.protection_info
    return [
        f"made with  python {env.get('python')}  torch {env.get('torch')}  numpy {env.get('numpy')}  "
        f"ulviz {env.get('ulviz')}  code {code}",
        f"device     {env.get('device')}" + (f"  cpu {env['cpu']}" if env.get("cpu") else "")
        + f"  threads {env.get('torch_threads')}  deterministic algorithms "
        f"{env.get('deterministic_algorithms')}  cudnn deterministic {env.get('cudnn_deterministic')} "
        f"benchmark {env.get('cudnn_benchmark')}",
        f"inputs     clean sha256 {str(digests.get('clean_train'))[:16]}  protected (as trained) sha256 "
        f"{str(digests.get('protected_train'))[:16]}  poison key {digests.get('poison_key')}",
        "protection " + (f"stored in the file ({stored['encoding']}, {stored['bytes'] / 1e6:.2f} MB), generated on "
                         f"{digests.get('poison_generation_threads')} thread(s)" if stored
                         else "regenerated on demand and checked against its digest"),
    ]


def _verify(args) -> int:
    from ..training.verify import verify_run

    report = verify_run(args.run, args.epochs, args.tolerance, args.threads)
    print(report.text())
    return 0 if report.ok else 1


def _poison(args) -> int:
    import numpy as np

    from ..data.datasets import load_dataset
    from ..protect.poisons import make_poison

    dataset = load_dataset(DataConfig(args.dataset, args.data_dir, args.allow_pickle, args.train_limit))
    config = PoisonConfig(args.method, args.ratio, args.seed, dict(args.param), args.budget)
    check_numbers(config)
    poison = make_poison(config, dataset, device=args.device, progress=not args.quiet)
    delta = (poison.x_train - dataset.x_train).flatten(1)
    print(f"{args.method}: {len(poison.indices)}/{len(dataset.x_train)} samples protected; "
          f"max |delta| {delta.abs().max():.4f}, max L2 {delta.norm(dim=1).max():.4f}"
          + (f"; cached at {poison.info['cached']}" if "cached" in poison.info else ""))
    if args.out:
        np.savez(args.out, x_train=poison.x_train.numpy(), y_train=dataset.y_train.numpy(), indices=poison.indices.numpy())
        print(f"saved {args.out}")
    return 0


def _list(args) -> int:
    from ..protect.poisons import method_info

    print("datasets:", ", ".join(list_datasets()))
    print("models:  ", ", ".join(list_models()))
    print("tasks:   ", ", ".join(list_tasks()))
    print("defenses:", ", ".join(list_defenses()))
    print("recipes: ", ", ".join(list_recipes()), "(default: paper on cifar10/cifar100, quick elsewhere)")
    print("budgets: ", ", ".join(list_budgets()))
    print("unlearnable methods:")
    for name in list_methods():
        m = method_info(name)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}=None ({m.kinds[k].__name__})" if v is None
                           else f"{k}={v}" for k, v in m.defaults.items())
        print(f"  {name:7s} {m.summary}" + (f"\n          params: {params}" if params else ""))
    return 0


COMMANDS = {"train": _train, "info": _info, "list": _list, "verify": _verify, "poison": _poison}
