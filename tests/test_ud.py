import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans

from conftest import tiny_config
from ulviz import SALConfig, UlvizError, train
from ulviz.cli import main
from ulviz.measure.ud import UDWarning, read_original_log, two_means_midpoint, unlearnable_distance


def test_hand_worked_example():
    clean = np.array([[0.0, 1.0, 10.0, 11.0],   # clusters {0,1} {10,11}: midpoint (0.5 + 10.5) / 2 = 5.5
                      [0.0, 0.0, 2.0, 4.0]])    # {0,0} {2,4} (SSE 2 beats {0,0,2} {4}, SSE 8/3): 1.5
    run = np.array([[4.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 5.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = unlearnable_distance(clean, {"em": run})
    assert res.threshold == pytest.approx(3.5)
    assert res.clean_count == pytest.approx(1.5)  # (2 + 1) / 2 epochs
    assert res.counts["em"] == pytest.approx(1.0)  # (1 + 1) / 2
    assert res.ud["em"] == pytest.approx(1.0 / 1.5)
    np.testing.assert_array_equal(res.per_epoch["em"], [1, 1])
    np.testing.assert_array_equal(res.per_layer["em"], [0.5, 0, 0, 0.5])


def test_midpoint_is_the_global_2_means_optimum():
    rng = np.random.RandomState(0)
    for _ in range(30):
        v = rng.exponential(size=rng.randint(3, 12))
        km = KMeans(n_clusters=2, n_init=50, random_state=0).fit(v.reshape(-1, 1))
        c = km.cluster_centers_[:, 0]
        assert two_means_midpoint(v) == pytest.approx((c.min() + c.max()) / 2, abs=1e-9)


def test_edge_cases():
    clean = np.array([[0.0, 1.0, 5.0], [0.0, 2.0, 6.0]])
    with pytest.raises(UlvizError, match="layers"):
        unlearnable_distance(clean, {"x": np.zeros((2, 4))})
    with pytest.raises(UlvizError, match="all equal"):
        unlearnable_distance(np.ones((3, 4)), {})
    with pytest.warns(UDWarning, match="NaN"):
        res = unlearnable_distance(clean, {"x": np.array([[np.nan, 0, 9.0], [0, 0, 9.0]])})
    assert res.counts["x"] == 1.0
    with pytest.warns(UDWarning, match="epochs"):
        unlearnable_distance(clean, {"x": np.array([[0, 0, 9.0]])})
    with pytest.raises(UlvizError, match="matrix"):
        unlearnable_distance(np.zeros(3), {})


LOG = """2024-05-01 10:00:00,000 - INFO - Namespace(dataset='c10')
2024-05-01 10:00:01,000 - INFO - Test Acc:  {acc:.4f}
2024-05-01 10:00:01,000 - INFO - epoch: {epoch}
2024-05-01 10:00:01,000 - INFO - train Acc:  95.0000, test Acc:   {acc:.3f}
2024-05-01 10:00:01,000 - INFO - Origin                   , Loss:   0.3000, Acc: 95.000
{details}
2024-05-01 10:00:02,000 - INFO - conv1                    , Sharpness_loss:   0.1000
"""


def _detail(layer, s, smax, smin, drop, rise):
    return (f"2024-05-01 10:00:01,500 - INFO - {layer:25} L:   0.3000 Acc: 95.0000 S: {s:8.4f} "
            f"SMax: {smax:8.4f} SMin: {smin:8.4f} Dropped Acc: {drop:5.3f} Rise Acc: {rise:5.3f}")


def test_reads_original_log(tmp_path):
    text = ""
    for epoch, acc in enumerate([40.0, 60.5]):
        details = "\n".join([_detail("conv1.weight", 0.5 + epoch, 0.5 + epoch, 0.1, 12.5, 1.0),
                             _detail("linear.weight", -0.2, 0.1, -0.2, 3.0, 2.0)])
        text += LOG.format(acc=acc, epoch=epoch, details=details)
    path = tmp_path / "clean" / "output.log"
    path.parent.mkdir()
    path.write_text(text)
    log = read_original_log(path)
    assert log.layers == ["conv1.weight", "linear.weight"]
    np.testing.assert_allclose(log.sal["sal"], [[0.5, -0.2], [1.5, -0.2]])
    np.testing.assert_allclose(log.sal["acc_drop"], [[0.125, 0.03], [0.125, 0.03]])
    np.testing.assert_allclose(log.test_acc, [0.4, 0.605])
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(UlvizError, match="no per-layer SAL"):
        read_original_log(tmp_path / "empty.log")


def test_cli_ud_on_run_files(tmp_path, capsys):
    from dataclasses import replace
    sal = SALConfig(estimator="fast", subset=200)
    paths = []
    for name, poison in (("clean", "clean"), ("noise", "random")):
        cfg = tiny_config(epochs=3)
        cfg = replace(cfg, name=name, sal=sal, poison=replace(cfg.poison, method=poison))
        train(cfg, tmp_path / f"{name}.h5")
        paths.append(str(tmp_path / f"{name}.h5"))
    rc = main(["ud", *paths, "--csv", str(tmp_path / "ud.csv"), "--json", str(tmp_path / "ud.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "noise" in out
    import pandas as pd
    table = pd.read_csv(tmp_path / "ud.csv")
    assert list(table["run"]) == ["clean", "noise"] and table["UD"][0] == 1.0
    assert table["count"][1] / table["count"][0] == pytest.approx(table["UD"][1])
    # a run without SAL is a clear error, exit 2
    train(replace(tiny_config(epochs=1), name="nosal"), tmp_path / "nosal.h5")
    assert main(["ud", paths[0], str(tmp_path / "nosal.h5")]) == 2
    assert "ulviz sal" in capsys.readouterr().err


def _sal_runs(tmp_path, specs):
    """Tiny runs with fast SAL: specs = [(file stem, method, seed)]."""
    from dataclasses import replace
    paths = {}
    for stem, method, seed in specs:
        cfg = tiny_config(epochs=2, seed=seed)
        cfg = replace(cfg, name=method, sal=SALConfig(estimator="fast", subset=100),
                      poison=replace(cfg.poison, method=method))
        train(cfg, tmp_path / f"{stem}.h5")
        paths[stem] = str(tmp_path / f"{stem}.h5")
    return paths


def test_cli_ud_takes_the_clean_run_as_reference_whatever_the_order(tmp_path, capsys):
    p = _sal_runs(tmp_path, [("a-noise", "random", 0), ("b-clean", "clean", 0)])
    # the protected run comes first (as `ulviz ud data/demo/*.h5` lists ar.h5 first): still the clean one is the reference
    assert main(["ud", p["a-noise"], p["b-clean"], "--csv", str(tmp_path / "ud.csv")]) == 0
    assert f"reference: {p['b-clean']}" in capsys.readouterr().out
    import pandas as pd
    table = pd.read_csv(tmp_path / "ud.csv")
    assert list(table["method"]) == ["clean", "random"] and list(table["role"]) == ["reference", "protected"]
    assert table["UD"][0] == 1.0


def test_cli_ud_refuses_without_or_with_several_clean_runs_unless_named(tmp_path, capsys):
    p = _sal_runs(tmp_path, [("clean0", "clean", 0), ("clean1", "clean", 1), ("noise", "random", 0)])
    assert main(["ud", p["noise"]]) == 2
    assert "no clean run" in capsys.readouterr().err
    assert main(["ud", p["clean0"], p["clean1"], p["noise"]]) == 2
    err = capsys.readouterr().err
    assert "several clean runs" in err and "--clean" in err
    # named: the other clean run is listed as clean, not as a protected run, with its own UD
    assert main(["ud", p["clean0"], p["clean1"], p["noise"], "--clean", p["clean1"], "--csv", str(tmp_path / "u.csv")]) == 0
    import pandas as pd
    table = pd.read_csv(tmp_path / "u.csv")
    assert table["run"][0] == "clean (clean1.h5)"
    assert list(table["role"]) == ["reference", "clean", "protected"]
    assert table["run"][1] == "clean (clean0.h5)"  # two runs named "clean": labelled by file, as on every page


def test_study_ud_reference_choice_and_runs_without_sal(tmp_path):
    from dataclasses import replace
    from ulviz.measure.ud import study_ud
    p = _sal_runs(tmp_path, [("clean0", "clean", 0), ("clean1", "clean", 1), ("noise", "random", 0)])
    train(replace(tiny_config(epochs=1), name="nosal"), tmp_path / "nosal.h5")
    paths = sorted(tmp_path.glob("*.h5"))
    first = study_ud(paths)
    assert str(first.reference.path) == p["clean0"] and len(first.candidates) == 2
    assert any("nosal" in m and "no UD" in m for m in first.skipped)  # no SAL: no UD, not a UD of 0
    assert "nosal" not in set(first.table["run"])
    other = study_ud(paths, p["clean1"])
    assert str(other.reference.path) == p["clean1"]
    # the threshold is the reference's: choosing the other clean run changes the numbers
    assert other.result.threshold != first.result.threshold
    assert other.sal_epochs()[other.table["run"][0]] == [1, 2]


# -- accuracy three ways and intervals over seeds -------------------------------------------------

def _metrics(test_acc):
    import pandas as pd
    return pd.DataFrame({"epoch": range(len(test_acc)), "test_acc": test_acc})


def test_accuracy_never_counts_the_untrained_epoch_0():
    from ulviz.core.accuracy import accuracy_summary
    # the sweep's case: a 3-epoch run, epoch 0 at chance; the old "last 4 rows" mean read 0.77
    s = accuracy_summary(_metrics([0.1, 1.0, 0.96, 0.985]), k=4)
    assert s.epochs == 3 and s.final == 0.985 and s.peak == 1.0
    assert s.last_k == pytest.approx((1.0 + 0.96 + 0.985) / 3)
    s = accuracy_summary(_metrics([0.1, 0.2, 0.5, 0.4, 0.6, 0.3]), k=2)
    assert s.last_k == pytest.approx(0.45) and s.peak == 0.6 and s.final == 0.3
    none = accuracy_summary(_metrics([0.1]))
    assert none.epochs == 0 and np.isnan(none.final) and np.isnan(none.last_k) and np.isnan(none.peak)
    with pytest.raises(ValueError):
        accuracy_summary(_metrics([0.1, 0.2]), k=0)


def test_mean_interval_against_hand_computation():
    from ulviz.measure.seeds import mean_interval
    # [1, 2, 3]: mean 2, sample std 1; t(0.975, 2 dof) = 4.302652729911275 (tables)
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, np.nan])
    assert mean == 2.0 and hi - mean == pytest.approx(4.302652729911275 / np.sqrt(3))
    assert mean - lo == pytest.approx(hi - mean)
    assert mean_interval([0.7]) == (0.7, 0.7, 0.7)
    assert all(np.isnan(v) for v in mean_interval([np.nan]))
    # a 90% interval is narrower: t(0.95, 2) = 2.919985580353726
    assert mean_interval([1.0, 2.0, 3.0], 0.9)[2] - 2 == pytest.approx(2.919985580353726 / np.sqrt(3))


def test_seed_table_and_summary_three_accuracies_against_the_run_files(tmp_path, capsys):
    from ulviz import open_run
    from ulviz.core.accuracy import accuracy_summary
    from ulviz.measure.seeds import seed_summary, seed_table
    p = _sal_runs(tmp_path, [("clean-s0", "clean", 0), ("clean-s1", "clean", 1), ("clean-s2", "clean", 2),
                             ("noise-s0", "random", 0), ("noise-s1", "random", 1), ("noise-s2", "random", 2)])
    table = seed_table(list(p.values()))
    for _, row in table.iterrows():
        m = open_run(row.path).metrics
        trained = m[m.epoch >= 1].test_acc.to_numpy()
        assert row.acc_final == trained[-1] and row.acc_peak == trained.max()
        assert row.acc_last == pytest.approx(trained[-4:].mean())
        twin = p[f"clean-s{row.seed}"]
        assert row.reference == "clean" and row.ratio_last == pytest.approx(
            row.acc_last / accuracy_summary(open_run(twin).metrics).last_k)
    summary = seed_summary(table)
    noise = summary[summary.method == "random"].iloc[0]
    v = table[table.method == "random"]["UD"].to_numpy()
    half = 4.302652729911275 * v.std(ddof=1) / np.sqrt(3)
    assert noise.seeds == 3 and noise.UD_mean == pytest.approx(v.mean())
    assert noise.UD_hi == pytest.approx(v.mean() + half) and noise.UD_lo == pytest.approx(v.mean() - half)
    assert summary[summary.method == "clean"].iloc[0].UD_mean == pytest.approx(1.0)
    assert main(["ud", *p.values(), "--clean", p["clean-s0"]]) == 0
    out = capsys.readouterr().out
    assert "over seeds" in out and "95% t interval" in out


def test_threshold_rules():
    from ulviz.measure.ud import clean_threshold
    clean = np.array([[0.0, 1.0, 10.0, 11.0], [0.0, 0.0, 2.0, 4.0]])  # the hand-worked example: midpoints 5.5, 1.5
    assert clean_threshold(clean)[0] == pytest.approx(3.5)
    # well-separated clusters: scikit-learn's KMeans finds the same centres, whatever its seed
    assert clean_threshold(clean, "kmeans", seed=3)[0] == pytest.approx(3.5)
    # percentile: of all 8 values [0,0,0,1,2,4,10,11]; the median is (1 + 2) / 2
    assert clean_threshold(clean, "percentile")[0] == pytest.approx(1.5)
    assert clean_threshold(clean, "percentile", q=100)[0] == 11.0
    ud = unlearnable_distance(clean, {"r": np.array([[2.0, 0, 0, 0], [0, 0, 0, 0]])}, rule="percentile")
    assert ud.threshold == 1.5 and ud.counts["r"] == 0.5 and ud.clean_count == pytest.approx((2 + 2) / 2)
    with pytest.raises(UlvizError, match="threshold rule"):
        clean_threshold(clean, "mean")


def test_twin_pairing_with_two_clean_runs_of_other_widths_in_one_directory(tmp_path):
    """The random run (width 16) is compared with the clean run of width 16, though the clean run
    of width 32 comes first and shares its task, dataset, model name and layer names."""
    from dataclasses import replace
    from ulviz import ModelConfig, open_run
    from ulviz.core.accuracy import accuracy_summary
    from ulviz.measure.seeds import seed_table
    from ulviz.studies.crosstask import crosstask_table
    from ulviz.studies.defense_study import defense_study
    paths = []
    for stem, method, width in (("a-clean-wide", "clean", 32), ("b-clean-narrow", "clean", 16), ("c-noise", "random", 16)):
        cfg = tiny_config(epochs=2)
        cfg = replace(cfg, name=method, model=ModelConfig("mlp", width), sal=SALConfig(estimator="fast", subset=100),
                      poison=replace(cfg.poison, method=method))
        train(cfg, tmp_path / f"{stem}.h5")
        paths.append(tmp_path / f"{stem}.h5")
    last = {p.stem: accuracy_summary(open_run(p).metrics).last_k for p in paths}
    want = last["c-noise"] / last["b-clean-narrow"]
    assert want != pytest.approx(last["c-noise"] / last["a-clean-wide"])  # the test can tell them apart
    narrow = open_run(paths[1]).sal["sal"]
    want_ud = unlearnable_distance(narrow, {"r": open_run(paths[2]).sal["sal"]}).ud["r"]
    ct = crosstask_table(paths, probe=False).set_index("run")
    noise = ct.loc[[r for r in ct.index if r.startswith("random")][0]]
    assert noise.ratio == pytest.approx(want) and noise.UD == pytest.approx(want_ud)
    ds = defense_study(paths).table.set_index("run")
    assert ds.loc[str(paths[2]), "ratio"] == pytest.approx(want) and ds.loc[str(paths[2]), "UD"] == pytest.approx(want_ud)
    st = seed_table(paths).set_index("path")
    assert st.loc[str(paths[2]), "ratio_last"] == pytest.approx(want) and st.loc[str(paths[2]), "UD"] == pytest.approx(want_ud)


def test_ud_variants_against_a_hand_count():
    """Two epochs x four layers, worked by hand. Clean rows: per-epoch 2-means midpoints 0.5 and
    0.5 (values 0,0,1,1 and 0,0,1,1), so the threshold is 0.5 and the clean run has 2 learnable
    layers per epoch. The run: 3 layers above 0.5 at epoch 1, 1 at epoch 2."""
    from ulviz.measure.ud import ud_variants
    clean = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    run = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.1, 0.1, 0.1]])
    table = ud_variants(clean, {"r": run}, epochs=[5, 10])
    assert table.loc["r", "midpoint (reference)"] == pytest.approx((3 + 1) / 2 / 2)
    assert table.loc["r", "epochs 10-10"] == pytest.approx(1 / 2) == table.loc["r", "epoch 10"]
    assert table.loc["r", "kmeans, 10 starts"] == "1.00-1.00"  # two clear clusters: every start agrees
    # the median of the clean values (0.5) and their 75th percentile (1.0): no clean value is
    # above 1.0, so UD is undefined there (NaN), never a division by zero
    assert table.loc["r", "median rule"] == pytest.approx(1.0)
    assert np.isnan(table.loc["r", "75th pct rule"])
