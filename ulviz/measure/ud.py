"""Unlearnable Distance (UD): how far a protected run's learnability is from the clean run's.

From the clean run's SAL matrix (epochs x layers): in every epoch, split the layers' SAL values
into two clusters and take the midpoint of the two centres; the threshold is the mean of those
midpoints over epochs. A layer is *learnable* at an epoch when its SAL is above the threshold.
A run's count is its learnable (epoch, layer) pairs divided by its epochs, and

    UD(run) = count(run) / count(clean)

so the clean run has UD 1 and a truly unlearnable protection would have UD 0.

The two clusters are the optimal 1-D 2-means split, found exhaustively over the sorted values
(a 1-D 2-means optimum always splits the sorted values into a lower and an upper run). The
original script uses scikit-learn's KMeans with one random initialisation, which on a handful of
layers lands in a worse local optimum in some epochs; the exhaustive split is optimal and
deterministic.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.accuracy import accuracy_summary
from ..core.errors import UlvizError, UnknownNameError


if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd


class UDWarning(UserWarning):
    """A UD input was unusual (NaN values, different epochs): the number is computed, but read it with care."""


@dataclass
class UDResult:
    threshold: float  # SAL above this counts as a learnable layer
    clean_count: float  # learnable layers per epoch in the clean run
    ud: dict[str, float]  # run name -> count / clean count
    counts: dict[str, float]  # run name -> learnable layers per epoch
    per_epoch: dict[str, np.ndarray]  # run name -> learnable layers at each epoch
    per_layer: dict[str, np.ndarray]  # run name -> fraction of epochs each layer is learnable
    epoch_thresholds: np.ndarray  # the clean run's midpoint at each epoch
    warnings: list[str] = field(default_factory=list)  # what was skipped or mismatched


def two_means_midpoint(values: np.ndarray) -> float:
    """Midpoint of the two centres of the optimal 1-D 2-means split of `values` (finite, >= 2)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if n < 2:
        raise UlvizError("two clusters need at least two values")
    csum, csq = np.cumsum(v), np.cumsum(v * v)
    k = np.arange(1, n)  # sizes of the lower cluster
    low_sse = csq[k - 1] - csum[k - 1] ** 2 / k
    up_sum, up_sq = csum[-1] - csum[k - 1], csq[-1] - csq[k - 1]
    up_sse = up_sq - up_sum ** 2 / (n - k)
    best = int(np.argmin(low_sse + up_sse))  # first optimum: deterministic on ties
    lo, hi = csum[best] / (best + 1), (csum[-1] - csum[best]) / (n - best - 1)
    return float((lo + hi) / 2)


THRESHOLD_RULES = ("midpoint", "kmeans", "percentile")  # see clean_threshold


def clean_threshold(clean_sal: np.ndarray, rule: str = "midpoint", *, seed: int | None = None,
                    q: float = 50.0) -> tuple[float, np.ndarray, list[str]]:
    """The UD threshold from the clean run's (epochs x layers) SAL, with per-epoch values.

    `rule`: "midpoint" (the default): per epoch the midpoint of the exact 1-D 2-means centres,
    averaged over epochs. "kmeans": the same with scikit-learn's ``KMeans(n_clusters=2)`` as the
    original code calls it (k-means++ seeding, one start; `seed` None draws it afresh, so two calls
    may differ: kept for parity with the original's numbers). "percentile": the `q`-th
    percentile of every finite clean SAL value (no clustering; a robustness check)."""
    if rule not in THRESHOLD_RULES:
        raise UnknownNameError("threshold rule", rule, list(THRESHOLD_RULES))
    sal = _matrix(clean_sal, "clean run")
    notes = []
    mids = []
    for e, row in enumerate(sal):
        finite = row[np.isfinite(row)]
        if len(finite) < len(row):
            notes.append(f"clean run: epoch row {e} has {len(row) - len(finite)} NaN/inf SAL value(s), skipped")
        if len(finite) >= 2:
            mids.append(two_means_midpoint(finite) if rule != "kmeans" else _kmeans_midpoint(finite, seed))
    if not mids:
        raise UlvizError("clean run has no epoch with two finite SAL values: no threshold can be set")
    finite_all = sal[np.isfinite(sal)]
    if np.ptp(finite_all) == 0:
        raise UlvizError("clean run's SAL values are all equal: no spread to set a threshold from")
    if rule == "percentile":
        return float(np.percentile(finite_all, q)), np.array(mids), notes
    return float(np.mean(mids)), np.array(mids), notes


def _kmeans_midpoint(values: np.ndarray, seed: int | None) -> float:
    """Midpoint of the two centres scikit-learn's KMeans(n_clusters=2) finds (may be a local optimum)."""
    from sklearn.cluster import KMeans
    centres = KMeans(n_clusters=2, n_init=1, random_state=seed).fit(values.reshape(-1, 1)).cluster_centers_[:, 0]
    return float(centres.mean())


def learnable_counts(sal: np.ndarray, threshold: float, name: str = "run") -> tuple[float, np.ndarray, np.ndarray, list[str]]:
    """(count per epoch on average, per-epoch counts, per-layer fractions, notes) for one run."""
    sal = _matrix(sal, name)
    notes = []
    finite = np.isfinite(sal)
    if not finite.all():
        notes.append(f"{name}: {int((~finite).sum())} NaN/inf SAL value(s) not counted")
    epochs_ok = finite.any(axis=1)
    if not epochs_ok.any():
        raise UlvizError(f"{name}: no finite SAL value")
    above = np.where(finite, sal > threshold, False)
    per_epoch = above.sum(axis=1).astype(float)
    per_epoch[~epochs_ok] = np.nan
    count = float(np.nansum(per_epoch) / epochs_ok.sum())
    per_layer = above[epochs_ok].mean(axis=0)
    return count, per_epoch, per_layer, notes


def unlearnable_distance(clean_sal: np.ndarray, runs_sal: dict[str, np.ndarray] | list[np.ndarray], *,
                         rule: str = "midpoint", seed: int | None = None, q: float = 50.0) -> UDResult:
    """Threshold from `clean_sal` (epochs x layers) by `rule` (:func:`clean_threshold`) and the
    UD of each run in `runs_sal`.

    Runs with another number of layers are refused; another number of epochs, or NaN values,
    give a :class:`UDWarning` (the count is per epoch, so it stays comparable).
    """
    if not isinstance(runs_sal, dict):
        runs_sal = {f"run{i}": v for i, v in enumerate(runs_sal)}
    clean = _matrix(clean_sal, "clean run")
    threshold, mids, notes = clean_threshold(clean, rule, seed=seed, q=q)
    clean_count, *_, more = learnable_counts(clean, threshold, "clean run")
    notes += more
    if clean_count == 0:
        raise UlvizError("no layer of the clean run is above the threshold: UD is undefined")
    result = UDResult(threshold, clean_count, {}, {}, {}, {}, mids, notes)
    for name, sal in runs_sal.items():
        sal = _matrix(sal, name)
        if sal.shape[1] != clean.shape[1]:
            raise UlvizError(f"{name} has {sal.shape[1]} layers, the clean run {clean.shape[1]}: not the same model")
        if sal.shape[0] != clean.shape[0]:
            result.warnings.append(f"{name} has {sal.shape[0]} epochs with SAL, the clean run {clean.shape[0]}")
        count, per_epoch, per_layer, more = learnable_counts(sal, threshold, name)
        result.warnings += more
        result.counts[name], result.ud[name] = count, count / clean_count
        result.per_epoch[name], result.per_layer[name] = per_epoch, per_layer
    for w in result.warnings:
        warnings.warn(w, UDWarning, stacklevel=2)
    return result


def _matrix(sal, name: str) -> np.ndarray:
    a = np.asarray(sal, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise UlvizError(f"{name}: SAL must be a non-empty (epochs x layers) matrix, got shape {a.shape}")
    return a


def ud_variants(clean_sal, runs_sal: dict[str, np.ndarray], epochs: list[int] | None = None,
                draws: int = 10) -> "pd.DataFrame":
    """How much UD moves with the choices that need no new SAL, one row per run of `runs_sal`:
    the threshold rule (the exact 2-means midpoint, the reference; the original's KMeans over
    `draws` random starts, as its min-max; the clean SAL's median and 75th percentile), and the
    epochs counted (every SAL epoch, the last half, the last one; `epochs` labels the rows of the
    matrices). The sample count and eps change the SAL itself: benchmarks/ud_sensitivity.py."""
    import pandas as pd
    clean = _matrix(clean_sal, "clean run")
    epochs = list(epochs) if epochs is not None else list(range(1, len(clean) + 1))
    half = len(epochs) // 2

    def ud(rows=slice(None), **rule) -> dict[str, float]:
        with warnings.catch_warnings():  # the reference's warnings were shown with it
            warnings.simplefilter("ignore", UDWarning)
            try:
                return unlearnable_distance(clean[rows], {n: _matrix(s, n)[rows] for n, s in runs_sal.items()},
                                            **rule).ud
            except UlvizError:  # e.g. no clean layer above this rule's threshold: UD undefined here
                return {n: float("nan") for n in runs_sal}
    draws_ud = [ud(rule="kmeans", seed=s) for s in range(draws)]
    cols = {"midpoint (reference)": ud(),
            f"kmeans, {draws} starts": {n: f"{min(d[n] for d in draws_ud):.2f}-{max(d[n] for d in draws_ud):.2f}"
                                          for n in runs_sal},
            "median rule": ud(rule="percentile", q=50), "75th pct rule": ud(rule="percentile", q=75),
            f"epochs {epochs[half]}-{epochs[-1]}": ud(slice(half, None)), f"epoch {epochs[-1]}": ud(slice(-1, None))}
    return pd.DataFrame(cols)


# -- the original implementation's logs --------------------------------------------------------

_DETAIL = re.compile(
    r"INFO - (?P<layer>\S+)\s+L:\s*(?P<loss0>\S+)\s+Acc:\s*(?P<acc0>\S+)\s+S:\s*(?P<sal>\S+)\s+SMax:\s*(?P<s_max>\S+)"
    r"\s+SMin:\s*(?P<s_min>\S+)\s+Dropped Acc:\s*(?P<acc_drop>\S+)\s+Rise Acc:\s*(?P<acc_rise>\S+)")
_TEST_ACC = re.compile(r"INFO - Test Acc:\s*([-+0-9.eE]+)\s*$")


@dataclass
class LogSAL:
    """SAL read from an `output.log` of the original implementation."""

    path: Path
    layers: list[str]  # weight tensors, in the order the script measured them
    sal: dict[str, np.ndarray]  # part -> (epochs x layers); accuracies converted to fractions
    test_acc: np.ndarray  # clean test accuracy after each epoch, as a fraction


def read_original_log(path: str | Path) -> LogSAL:
    """Per-epoch, per-layer SAL from the log that MLsecurityLab/HowFarAreFromTrueUnlearnability's
    ``poison_train_sharp.py`` writes (its per-layer ``L: ... S: ... SMax: ... SMin: ... Dropped
    Acc: ... Rise Acc: ...`` lines, grouped by epoch)."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UlvizError(f"{path}: cannot read ({e.strerror or e})") from None
    epochs: list[dict[str, dict[str, float]]] = []
    test_acc: list[float] = []
    for line in text.splitlines():
        m = _TEST_ACC.search(line)
        if m:
            test_acc.append(float(m.group(1)) / 100)
            epochs.append({})
            continue
        m = _DETAIL.search(line)
        if m:
            if not epochs:
                epochs.append({})
            values = {k: float(v) for k, v in m.groupdict().items() if k != "layer"}
            epochs[-1][m.group("layer")] = values
    epochs = [e for e in epochs if e]
    if not epochs:
        raise UlvizError(f"{path}: no per-layer SAL lines found; is this an output.log of poison_train_sharp.py?")
    layers = list(epochs[0])
    if any(list(e) != layers for e in epochs):
        raise UlvizError(f"{path}: the layers measured differ between epochs")
    parts = {}
    for part in ("sal", "s_max", "s_min", "acc_drop", "acc_rise"):
        scale = 0.01 if part.startswith("acc") else 1.0
        parts[part] = np.array([[e[l][part] * scale for l in layers] for e in epochs])
    return LogSAL(path, layers, parts, np.array(test_acc[: len(epochs)]))


# -- runs and tables ---------------------------------------------------------------------------

@dataclass
class SALSource:
    """SAL of one run for UD: from a run file or an original-implementation log."""

    name: str  # label in tables (the run's name, or the log's folder)
    layers: list[str]
    sal: np.ndarray  # (epochs x layers)
    final_test_acc: float  # clean test accuracy at the last epoch (NaN if unknown)
    method: str  # unlearnable method, "" if unknown
    path: Path | None = None  # where it was read from
    sal_epochs: list[int] = field(default_factory=list)  # the epochs that have SAL rows
    sal_settings: dict = field(default_factory=dict)  # how that SAL was computed (estimator, subset, ...)
    task: str = "classify"  # what the run learned (UD compares runs of one task)
    defenses: list = field(default_factory=list)  # the trainer's defenses (UD compares runs under the same ones)


def load_sal_source(path: str | Path) -> SALSource:
    """A run file's stored SAL, or SAL imported from an original `output.log`."""
    path = Path(path)
    if path.suffix == ".log":
        log = read_original_log(path)
        acc = float(log.test_acc[-1]) if len(log.test_acc) else float("nan")
        label = path.parent.name if path.name == "output.log" else path.stem
        return SALSource(label, log.layers, log.sal["sal"], acc, "", path, list(range(1, len(log.sal["sal"]) + 1)))
    from ..store.runs import open_run

    run = open_run(path)
    if len(run.sal_epochs) == 0:
        raise NoSALError(f"{path}: no SAL stored, so no UD (UD is not 0 without SAL); "
                         f"compute it with `ulviz sal {path}`")
    acc = accuracy_summary(run.metrics).final
    return SALSource(run.name, run.layer_names, run.sal["sal"], acc, run.config.poison.method, path,
                     [int(e) for e in run.sal_epochs], dict(run.sal_settings), run.config.train.task,
                     list(run.config.train.defenses))


class NoSALError(UlvizError):
    """A run file without SAL rows: it has no UD (not a UD of 0)."""


def ud_table(clean, runs) -> tuple["pd.DataFrame", UDResult]:
    """UD of `runs` against the reference `clean` (paths or SALSources) as a table, reference
    first: method, run, role, UD, learnable layers per epoch, final clean-test accuracy. Another
    clean run among `runs` gets the role "clean" (a second clean run is not a protected run: its
    UD shows how much clean training itself varies)."""
    import pandas as pd

    clean = clean if isinstance(clean, SALSource) else load_sal_source(clean)
    sources = [r if isinstance(r, SALSource) else load_sal_source(r) for r in runs]
    names = source_labels([clean] + sources)
    for s in sources:
        if s.task != clean.task:
            raise UlvizError(f"{s.name} learned the task {s.task!r}, the clean reference {clean.name} {clean.task!r}: "
                             "UD compares a poisoned run of a task with the clean run of the same task")
        if s.defenses != clean.defenses:
            raise UlvizError(f"{s.name} was trained with the defenses {s.defenses or 'none'}, the clean reference "
                             f"{clean.name} with {clean.defenses or 'none'}: UD of a defended run is taken against "
                             "the clean run trained with the same defenses")
        if s.layers != clean.layers:
            raise UlvizError(f"{s.name}: its layers differ from the clean run's ({len(s.layers)} vs {len(clean.layers)}); "
                             "UD compares runs of the same model")
    result = unlearnable_distance(clean.sal, {n: s.sal for n, s in zip(names, [clean] + sources)})
    roles = ["reference"] + ["clean" if s.method == "clean" else "protected" for s in sources]
    rows = [{"method": s.method or n, "run": n, "role": role, "UD": result.ud[n], "count": result.counts[n],
             "final_test_acc": s.final_test_acc} for n, s, role in zip(names, [clean] + sources, roles)]
    return pd.DataFrame(rows), result


def source_labels(sources: list[SALSource]) -> list[str]:
    """One label per source, by the rule of :func:`ulviz.store.runs.run_labels` (the dashboard's for
    runs, so a run reads the same in every table and legend)."""
    from ..store.runs import run_labels
    return run_labels([(s.name, s.path or Path(s.name)) for s in sources])


def choose_clean(sources: list[SALSource], clean: str | Path | None = None) -> SALSource:
    """The reference of a UD comparison: the source read from `clean` when given, else the one
    clean run among `sources`; refuses when there is none or several (name one with --clean)."""
    if clean is not None:
        target = Path(clean).resolve()
        for s in sources:
            if s.path is not None and s.path.resolve() == target:
                return s
        return load_sal_source(clean)
    cleans = [s for s in sources if s.method == "clean"]
    if not cleans:
        raise UlvizError("no clean run among these files: UD needs a clean reference; name one with --clean FILE")
    if len(cleans) > 1:
        raise UlvizError("several clean runs (" + ", ".join(str(s.path or s.name) for s in cleans)
                         + "): name the reference with --clean FILE")
    return cleans[0]


@dataclass
class Study:
    """UD of the runs of a directory against one clean reference."""

    table: "pd.DataFrame"  # ud_table's rows
    result: UDResult
    reference: SALSource  # the clean run every other run is compared with
    candidates: list[Path]  # every clean run with SAL (the references one may choose)
    skipped: list[str]  # runs that have no UD here, with the reason
    sources: list[SALSource] = field(default_factory=list)  # in the table's order, reference first

    def sal_epochs(self) -> dict[str, list[int]]:
        """Table label -> the epochs of that run's SAL rows."""
        return {label: s.sal_epochs for label, s in zip(self.table["run"], self.sources)}


def study_ud(paths, clean: str | Path | None = None) -> Study | None:
    """UD of every run file in `paths` that has SAL against the clean run `clean` (default: the
    first clean run with SAL); runs of another model, and runs without SAL, are listed in
    `skipped` with the reason. None when no clean run has SAL."""
    sources, skipped = [], []
    for p in paths:
        try:
            sources.append(load_sal_source(p))
        except UlvizError as e:
            skipped.append(str(e))
    candidates = [s for s in sources if s.method == "clean"]
    if not candidates:
        return None
    reference = candidates[0]
    if clean is not None:
        reference = next((s for s in candidates if s.path.resolve() == Path(clean).resolve()), reference)
    others = []
    for s in sources:
        if s is reference:
            continue
        if s.task != reference.task:
            skipped.append(f"{s.name} ({s.path}): task {s.task}, the reference's is {reference.task}")
        elif s.defenses != reference.defenses:
            skipped.append(f"{s.name} ({s.path}): trained with other defenses than the reference")
        elif s.layers != reference.layers:
            skipped.append(f"{s.name} ({s.path}): another model than the reference {reference.name} ({reference.path})")
        else:
            others.append(s)
    table, result = ud_table(reference, others)
    return Study(table, result, reference, [s.path for s in candidates], skipped, [reference] + others)


# -- a group of runs against its own clean run ---------------------------------------------------

def clean_member(runs: dict):
    """The key of a group's first clean run (key -> Run), or None when it has none."""
    return next((k for k, r in runs.items() if r.config.poison.method == "clean"), None)


def group_ud(runs: dict) -> tuple[object | None, "UDResult | None", list]:
    """For a group of runs (key -> Run) that share a reference: the key of the group's first clean
    run (:func:`clean_member`), the UD of every member with SAL comparable to it (same layers; the
    clean run's own UD is 1), and the keys of the members left without UD. (None, None, all
    keys) when the group has no clean run; (key, None, ...) when it or none of its members has
    SAL."""
    key = clean_member(runs)
    if key is None:
        return None, None, list(runs)
    clean = runs[key]
    with_sal = {k: r for k, r in runs.items() if len(r.sal_epochs) and r.layer_names == clean.layer_names}
    missing = [k for k in runs if k not in with_sal]
    if not len(clean.sal_epochs) or not with_sal:
        return key, None, missing
    return key, unlearnable_distance(clean.sal["sal"], {k: r.sal["sal"] for k, r in with_sal.items()}), missing
