"""Defense studies: does a protection survive a trainer who defends, and which layers come back?

A study is a grid of runs, protection x defense, on one network, recipe and seed. Per run it
reports the clean-test accuracy (mean of the last epochs), its ratio to the clean run trained
under the *same* defense, and the UD against that same clean run: a defense changes what even
clean training learns (grayscale drops colour, adversarial training costs accuracy), so only the
clean run under that defense says how much of the loss is the protection's. The per-layer
learnable fractions (the share of SAL epochs in which a layer's SAL is above the clean run's
threshold) show which layers a defense makes learnable again.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..core.accuracy import LAST_K, accuracy_summary
from ..core.config import PoisonConfig, RunConfig
from ..protect.defenses import get_defense

NONE = "none"  # the label of training without any defense


def defense_label(specs: list[dict]) -> str:
    """A short label for a run's defenses: ``none``, ``jpeg``, ``at(steps=2, alpha=0.0157)``, joined
    by ``+``; parameters are named only where they differ from the defense's defaults."""
    if not specs:
        return NONE
    parts = []
    for spec in specs:
        defaults = get_defense(spec["name"]).defaults
        changed = {k: v for k, v in spec.get("params", {}).items() if defaults.get(k) != v}
        args = ", ".join(f"{k}={_number(v)}" for k, v in changed.items())
        parts.append(f"{spec['name']}({args})" if args else spec["name"])
    return "+".join(parts)


def _number(v) -> str:
    """A parameter as a reader writes it: budgets in pixel levels (0.01569 -> 4/255)."""
    if isinstance(v, float) and 0 < v < 1 and abs(v * 255 - round(v * 255)) < 1e-3:
        return f"{round(v * 255)}/255"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def study_configs(base: RunConfig, methods: dict[str, PoisonConfig], defenses: dict[str, list[dict]]
                  ) -> dict[str, RunConfig]:
    """File stem -> config of every (defense, method) run; the clean run under each defense is
    always in, since it is the reference of its column."""
    methods = {"clean": PoisonConfig("clean"), **methods}
    return {f"{dlabel}-{mlabel}": replace(base, name=mlabel, poison=poison,
                                          train=replace(base.train, defenses=list(specs)))
            for dlabel, specs in defenses.items() for mlabel, poison in methods.items()}


@dataclass
class DefenseStudy:
    table: pd.DataFrame  # one row per run: method, defense, accuracy, ratio, UD, learnable (layers per epoch)
    per_layer: pd.DataFrame  # one row per (method, defense, layer): fraction of SAL epochs the layer is learnable
    notes: list[str]  # runs left out of UD, and why

    def pivot(self, value: str) -> pd.DataFrame:
        """Method (rows, clean first) x defense (columns, none first) of `value`."""
        p = self.table.pivot_table(index="method", columns="defense", values=value, aggfunc="first", dropna=False)
        rows = sorted(p.index, key=lambda m: (m != "clean", list(self.table["method"]).index(m)))
        cols = sorted(p.columns, key=lambda d: (d != NONE, list(self.table["defense"]).index(d)))
        return p.reindex(index=rows, columns=cols)

    def layers(self, method: str, defense: str) -> pd.DataFrame:
        """Layer -> learnable fraction for `method` without any defense and under `defense`."""
        pick = self.per_layer[self.per_layer["method"] == method]
        out = pick.pivot_table(index="layer", columns="defense", values="fraction", aggfunc="first", sort=False)
        return out.reindex(columns=list(dict.fromkeys(c for c in (NONE, defense) if c in out.columns)))


def defense_study(paths: Iterable[str | Path]) -> DefenseStudy:
    """The study of the run files `paths`, shown by defense; the method label is the run's name.
    Each run's ratio and UD are against its clean twin (:func:`ulviz.measure.seeds.clean_twin_key`: the
    clean run trained the same way, under the same defenses). Runs without SAL (or whose clean
    twin has none) get accuracy and ratio, no UD."""
    from ..core.errors import UlvizError
    from ..store.runs import open_run
    from ..measure.ud import clean_member, group_ud
    from ..measure.seeds import clean_twin_key

    runs = [open_run(p) for p in paths]
    rows = [{"method": r.name, "defense": defense_label(list(r.config.train.defenses)),
             "accuracy": accuracy_summary(r.metrics, LAST_K).last_k, "run": str(r.path)} for r in runs]
    table = pd.DataFrame(rows, columns=["method", "defense", "accuracy", "run"])
    table["ratio"], table["UD"], table["learnable"] = np.nan, np.nan, np.nan
    layer_rows, notes = [], []
    table["_twin"] = [clean_twin_key(r.config) for r in runs]
    for _, group in table.groupby("_twin", sort=False):
        members = {i: runs[i] for i in group.index}
        clean = clean_member(members)
        defense = group["defense"].iloc[0]
        if clean is None:
            notes.append(f"{', '.join(group['method'])} under {defense}: no clean run trained the same way under this "
                         "defense, so no ratio or UD")
            continue
        table.loc[group.index, "ratio"] = group["accuracy"] / table.at[clean, "accuracy"]
        try:
            _, result, missing = group_ud(members)
        except UlvizError as e:
            notes.append(f"{defense}: {e}")
            continue
        notes += [f"{table.at[i, 'method']} under {defense}: no SAL comparable with its clean run, so no UD"
                  for i in missing]
        if result is None:
            continue
        for i in result.ud:
            table.at[i, "UD"], table.at[i, "learnable"] = result.ud[i], result.counts[i]
            layer_rows += [{"method": table.at[i, "method"], "defense": defense, "layer": layer, "fraction": float(f)}
                           for layer, f in zip(runs[clean].layer_names, result.per_layer[i])]
    per_layer = pd.DataFrame(layer_rows, columns=["method", "defense", "layer", "fraction"])
    return DefenseStudy(table[["method", "defense", "accuracy", "ratio", "UD", "learnable", "run"]], per_layer, notes)


def study_text(study: DefenseStudy) -> str:
    """The accuracy (ratio to clean under the same defense) and UD tables as plain text."""
    acc, ratio, ud = study.pivot("accuracy"), study.pivot("ratio"), study.pivot("UD")
    cells = acc.copy().astype(object)
    for m in acc.index:
        for d in acc.columns:
            a, r = acc.at[m, d], ratio.at[m, d]
            cells.at[m, d] = "-" if np.isnan(a) else (f"{a:.3f}" if np.isnan(r) else f"{a:.3f} ({r:.2f})")
    ud_text = ud.map(lambda v: "-" if np.isnan(v) else f"{v:.2f}")
    return ("clean-test accuracy (ratio to clean training under the same defense)\n" + cells.to_string()
            + "\n\nUD against clean training under the same defense\n" + ud_text.to_string())


def save_study(study: DefenseStudy, path: str | Path, note: str = "") -> Path:
    """Keep a finished study's tables (no run files needed to show it again)."""
    from ..store.tables import write_tables
    notes = pd.DataFrame({"note": study.notes}, columns=["note"])
    return write_tables(path, "defense-study", {"table": study.table, "per_layer": study.per_layer, "notes": notes}, note)


def load_study(path: str | Path) -> tuple[DefenseStudy, str]:
    """A study kept by :func:`save_study`, and its note (how it was made)."""
    from ..store.tables import read_tables
    tables, note = read_tables(path, "defense-study")
    return DefenseStudy(tables["table"], tables["per_layer"], list(tables["notes"]["note"])), note


def bundled_study_path() -> Path:
    """The study shipped with the repository (benchmarks/defense_effect.py --summary)."""
    from .demo import DATA_ROOT
    return DATA_ROOT / "studies" / "defenses-cifar10.h5"
