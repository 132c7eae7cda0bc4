"""Landscapes and paths against hand-loaded weights, sklearn's PCA and plain loops."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ulviz import create_model, load_dataset, train
from ulviz.cli import main
from ulviz.core.errors import UlvizError
from ulviz.measure.landscape import directions, evaluation, surfaces
from ulviz.measure.landscape import runs as landscape_runs
from ulviz.measure.trajectory import divergence, layer_path, pca_plane
from ulviz.store.caches import list_landscapes
from ulviz.store.runs import open_run

from conftest import tiny_config


def _model(name, seed=0, width=None):
    torch.manual_seed(seed)
    ds = load_dataset("synthetic", train_limit=96, test_limit=64)
    m = create_model(name, ds.image_shape, ds.num_classes, width).double().eval()
    if name == "cnn":  # non-trivial batch-norm statistics, which eval mode must keep
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m, ds.x_test.double(), ds.y_test


def _loss_by_hand(model, x, y, shift):
    """Load θ + shift into a deep copy with load_state_dict and evaluate it plainly."""
    m = copy.deepcopy(model)
    state = m.state_dict()
    for n, v in shift.items():
        state[n] = state[n] + v
    m.load_state_dict(state)
    with torch.no_grad():
        out = m(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def _assert_points_by_hand(land, model, x, y, points, tol):
    """The plane's loss and accuracy at grid `points` equal a hand-loaded copy's."""
    d, e = land.directions
    for i, j in points:
        a, b = land.coords[0][i], land.coords[1][j]
        loss, acc = _loss_by_hand(model, x, y, {n: a * d[n] + b * e[n] for n in d})
        assert land.loss[i, j] == pytest.approx(loss, abs=tol)
        assert land.acc[i, j] == pytest.approx(acc)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _identical(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name, width, mode", [
    ("linear", None, None), ("mlp", 16, None), ("mlp", 16, "vmap"), ("mlp", 16, "loop"),
    ("lenet5", None, None), ("lenet5", None, "vmap"), ("cnn", 4, None)])
def test_plane_points_equal_hand_loaded_weights(monkeypatch, name, width, mode):
    monkeypatch.setattr(evaluation, "_FORCE_MODE", mode)
    model, x, y = _model(name, width=width)
    before = _state(model)
    land = surfaces.plane(model, (x, y), resolution=5, span=0.5, seed=3, batch_size=27)  # 3 batches, 2 padded
    assert _identical(model, before)
    d, e = land.directions
    with torch.no_grad():
        plain = F.cross_entropy(model(x), y).item()
    assert land.loss[2, 2] == pytest.approx(plain, abs=1e-10)  # the centre is the model itself
    for i, j in [(0, 4), (1, 3), (4, 0), (3, 2)]:
        a, b = land.coords[0][i], land.coords[1][j]
        loss, acc = _loss_by_hand(model, x, y, {n: a * d[n] + b * e[n] for n in d})
        assert land.loss[i, j] == pytest.approx(loss, abs=1e-9)
        assert land.acc[i, j] == pytest.approx(acc)


def test_filter_normalization_and_biasbn():
    model, _, _ = _model("cnn", width=4)
    d = directions.random_direction(model, normalization="filter", seed=1)
    for n, w in model.named_parameters():
        if w.dim() > 1:
            assert torch.allclose(d[n].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1).to(d[n].dtype), rtol=1e-6)
        else:  # biases and batch-norm scales/shifts are left out by default
            assert d[n].count_nonzero() == 0
    kept = directions.random_direction(model, seed=1, keep_biasbn=True)
    for n, w in model.named_parameters():
        if w.dim() <= 1:  # kept, and scaled to the tensor's own norm (zero for a zero-initialised shift)
            assert kept[n].norm().item() == pytest.approx(w.detach().norm().item(), rel=1e-6)
    assert any(kept[n].count_nonzero() for n, w in model.named_parameters() if w.dim() <= 1)
    layer = directions.random_direction(model, normalization="layer", seed=1)
    for n, w in model.named_parameters():
        if w.dim() > 1:
            assert layer[n].norm().item() == pytest.approx(w.detach().norm().item(), rel=1e-6)
    only = directions.random_direction(model, seed=1, layer="conv1.weight")
    assert [n for n in only if only[n].count_nonzero()] == ["conv1.weight"]
    assert torch.equal(only["conv1.weight"], d["conv1.weight"])  # same seed, same draw for that tensor
    with pytest.raises(UlvizError, match="not a parameter"):
        directions.random_direction(model, layer="nope")


def test_layer_restricted_line_moves_one_tensor():
    model, x, y = _model("lenet5")
    land = surfaces.line(model, (x, y), resolution=7, layer="fc2.weight", seed=2)
    (d,) = land.directions
    assert [n for n in d if d[n].count_nonzero()] == ["fc2.weight"]
    for i in (0, 5):
        loss, _ = _loss_by_hand(model, x, y, {"fc2.weight": land.coords[0][i] * d["fc2.weight"]})
        assert land.loss[i] == pytest.approx(loss, abs=1e-9)


def test_interpolation_ends_are_the_endpoint_losses():
    a, x, y = _model("mlp", seed=0, width=16)
    b, _, _ = _model("mlp", seed=1, width=16)
    before = _state(a)
    land = surfaces.interpolation(a, (x, y), a.state_dict(), b.state_dict(), resolution=9, span=(-0.5, 1.5))
    with torch.no_grad():
        la, lb = F.cross_entropy(a(x), y).item(), F.cross_entropy(b(x), y).item()
    assert land.coords[0][2] == 0 and land.coords[0][6] == 1
    assert land.loss[2] == pytest.approx(la, abs=1e-10)
    assert land.loss[6] == pytest.approx(lb, abs=1e-9)
    assert _identical(a, before)


def test_coarse_points_come_first_and_are_part_of_the_grid():
    order = surfaces.grid_order(9, 3)
    assert sorted(order) == list(range(81))
    assert set(order[:9]) == {r * 9 + c for r in (0, 4, 8) for c in (0, 4, 8)}
    with pytest.raises(UlvizError, match="does not divide"):
        surfaces.grid_order(9, 4)
    model, x, y = _model("mlp", width=16)
    seen = []
    full = surfaces.plane(model, (x, y), resolution=9, coarse=3, on_points=lambda idx, l, a: seen.extend(idx))
    assert set(seen[:9]) == set(order[:9])
    coarse = surfaces.coarse_view(full, 3)
    small = surfaces.plane(model, (x, y), resolution=3, directions=full.directions)
    assert np.allclose(coarse.loss, small.loss, atol=1e-12)


def test_points_in_any_order_and_chunking_match_the_grid():
    """Rows share their first-direction term (cached per batch): points that come shuffled, in
    chunks that split and revisit rows, over padded batches, must give the grid's values."""
    model, x, y = _model("mlp", width=16)
    land = surfaces.plane(model, (x, y), resolution=7, span=0.8)
    mesh = np.stack([m.ravel() for m in np.meshgrid(*land.coords, indexing="ij")], axis=1)
    order = np.random.default_rng(0).permutation(len(mesh))
    ev = evaluation._Evaluator(model, directions._params(model), land.directions, x, y, batch_size=25,
                      device=torch.device("cpu"), memory_bytes=1)  # one point per chunk at first...
    ev.chunk = 5  # ...then five: chunks with two or three rows each
    loss, acc = ev(torch.from_numpy(mesh[order]))
    assert np.allclose(loss, land.loss.ravel()[order], atol=1e-12)
    assert np.array_equal(acc, land.acc.ravel()[order])


def test_known_points_are_not_recomputed():
    model, x, y = _model("mlp", width=16)
    full = surfaces.plane(model, (x, y), resolution=5)
    done = np.zeros(25, dtype=bool)
    done[:10] = True
    loss = np.where(done, full.loss.ravel(), np.nan)
    seen = []
    again = surfaces.plane(model, (x, y), resolution=5, known=(loss, full.acc.ravel(), done),
                    on_points=lambda idx, l, a: seen.extend(idx))
    assert sorted(seen) == list(range(10, 25))
    assert np.allclose(again.loss, full.loss, atol=1e-12)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(epochs=4)
    train(cfg, d / "clean.h5")
    train(replace(cfg, name="random", poison=replace(cfg.poison, method="random", params={"mode": "class", "eps": 0.2})),
          d / "random.h5")
    return d / "clean.h5", d / "random.h5"


def test_pca_coordinates_are_projections(two_runs):
    from sklearn.decomposition import PCA
    clean = open_run(two_runs[0])
    plane = pca_plane(clean)
    rows = np.concatenate([clean.weights_path(n).reshape(len(clean.metrics), -1) for n in plane.names], axis=1)
    rel = rows.astype(np.float64) - rows[-1]
    ref = PCA(2).fit(rel)
    assert np.allclose(plane.explained, ref.explained_variance_ratio_, atol=1e-8)
    for k in range(2):
        v = np.concatenate([plane.directions[k][n].double().numpy().ravel() for n in plane.names])
        assert abs(abs(v @ ref.components_[k]) - 1) < 1e-5  # the same direction up to sign
        assert np.allclose(plane.coords[0][:, k], rel @ v, atol=1e-5)  # coordinates = projections
    assert np.allclose(plane.coords[0][-1], 0)  # the final weights sit at the origin


def test_shared_plane_layer_path_and_divergence(two_runs):
    clean, poisoned = open_run(two_runs[0]), open_run(two_runs[1])
    shared = pca_plane([clean, poisoned])
    assert len(shared.coords) == 2 and np.allclose(shared.coords[0][0], shared.coords[1][0], atol=1e-5)  # same init
    lp = layer_path(clean, "1.weight")
    assert lp.names == ["1.weight"] and lp.coords[0].shape == (5, 2)
    table = divergence(clean, poisoned)
    row = table[(table["layer"] == "1.weight") & (table["epoch"] == 3)].iloc[0]
    c, p = clean.weights_path("1.weight"), poisoned.weights_path("1.weight")
    assert row["rel_distance"] == pytest.approx(np.linalg.norm(p[3] - c[3]) / np.linalg.norm(c[3]))
    uc, up = (c[3] - c[2]).ravel(), (p[3] - p[2]).ravel()
    assert row["update_cosine"] == pytest.approx(uc @ up / np.linalg.norm(uc) / np.linalg.norm(up), rel=1e-5)
    assert table[table["epoch"] == 0]["rel_distance"].max() == 0


def test_run_landscape_caches_and_resumes(two_runs, tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    path.write_bytes(two_runs[0].read_bytes())
    run = open_run(path)
    model = landscape_runs.run_model(run)
    before = _state(model)
    evaluated = []
    real_call = evaluation._Evaluator.__call__

    def counting(self, coords):
        evaluated.append(len(coords))
        return real_call(self, coords)
    monkeypatch.setattr(evaluation._Evaluator, "__call__", counting)

    class Stop(Exception):
        pass

    def stop_after(done, total):
        if done >= 20:
            raise Stop
    monkeypatch.setattr(evaluation, "_FORCE_MODE", "loop")  # chunks of 32 points: the stop comes after the first
    with pytest.raises(Stop):
        landscape_runs.run_landscape(path, "plane", resolution=9, progress=stop_after)
    partial = landscape_runs.run_landscape(path, "plane", resolution=9, compute=False)
    done = int(np.isfinite(partial.loss).sum())
    assert 0 < done < 81 and partial.settings["complete"] == pytest.approx(done / 81)
    evaluated.clear()
    full = landscape_runs.run_landscape(path, "plane", resolution=9)
    assert sum(evaluated) == 81 - done  # only the missing points
    ref = surfaces.plane(model, landscape_runs.run_data(run, "test"), resolution=9)
    assert np.allclose(full.loss, ref.loss, atol=1e-6)
    evaluated.clear()
    again = landscape_runs.run_landscape(path, "plane", resolution=9)
    assert sum(evaluated) == 0 and np.array_equal(again.loss, full.loss)
    assert _identical(model, before)
    kinds = {s["kind"] for s in list_landscapes(path)}
    assert kinds == {"plane"}
    interp = landscape_runs.run_landscape(path, "interp", resolution=5, span=(0, 1))
    assert interp.loss[-1] == pytest.approx(run.metrics["test_loss"].iloc[-1], abs=1e-5)
    assert interp.loss[0] == pytest.approx(run.metrics["test_loss"].iloc[0], abs=1e-5)


def test_a_landscape_toward_a_rewritten_run_is_not_served_from_the_cache(two_runs, tmp_path):
    """The clean run caches the interpolation toward the other run's final weights; when that file is
    remade under the same name (a remade demo run), the cache must not answer for the new weights."""
    clean, other = tmp_path / "clean.h5", tmp_path / "other.h5"
    clean.write_bytes(two_runs[0].read_bytes())
    other.write_bytes(two_runs[1].read_bytes())
    first = landscape_runs.run_landscape(clean, "interp", resolution=5, subset=32, other=other)
    assert landscape_runs.run_landscape(clean, "interp", resolution=5, subset=32, other=other, compute=False) is not None
    cfg = open_run(other).config
    train(replace(cfg, poison=replace(cfg.poison, params={"mode": "class", "eps": 0.3})), other, overwrite=True)
    assert landscape_runs.run_landscape(clean, "interp", resolution=5, subset=32, other=other, compute=False) is None
    again = landscape_runs.run_landscape(clean, "interp", resolution=5, subset=32, other=other)
    assert not np.allclose(again.loss, first.loss)  # the new weights' path, not the cached one


def test_cli_landscape_and_paths(two_runs, tmp_path, capsys):
    path = tmp_path / "run.h5"
    path.write_bytes(two_runs[0].read_bytes())
    assert main(["landscape", str(path), "--kind", "pca", "--resolution", "5", "--quiet", "--csv", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "explained variance" in out and (tmp_path / "p.csv").exists()
    assert main(["paths", str(two_runs[0]), str(two_runs[1])]) == 0
    assert "per-layer divergence" in capsys.readouterr().out
    assert main(["landscape", str(path), "--layer", "nope", "--quiet"]) == 2
    assert main(["landscape", str(path), "--range", "1", "--quiet"]) == 2
    assert main(["landscape", str(tmp_path / "missing.h5")]) == 2
    assert "error" in capsys.readouterr().err


def test_classes_major_loss_matches_cross_entropy_and_argmax_even_at_ties():
    from ulviz.measure.landscape.evaluation import _loss_and_correct
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 40, generator=g)  # (batches, points, classes, samples)
    y = torch.randint(0, 5, (2, 40), generator=g)
    logits[0, 0, :, :10] = 1.0  # all classes tied: argmax picks class 0
    logits[1, 1, 2, 10:20] = logits[1, 1, 4, 10:20] = 9.0  # classes 2 and 4 tied at the top
    logits[1, 2, :, 30:] = float("inf")  # padding may overflow; it must not leak into the sums
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, 30:] = False
    loss, correct = _loss_and_correct(logits.clone(), y, valid)
    for p in range(3):
        flat = torch.cat([logits[0, p], logits[1, p, :, :30]], 1).t()  # (samples, classes), padding dropped
        labels = torch.cat([y[0], y[1, :30]])
        assert loss[p].item() == pytest.approx(F.cross_entropy(flat, labels, reduction="sum").item(), rel=1e-6)
        assert correct[p].item() == (flat.argmax(1) == labels).sum().item()




def test_pca_plane_origin_is_the_whole_final_state(tmp_path):
    """The PCA plane's (0, 0) is the trained network itself: its loss there equals a plain
    evaluation of the final weights, batch-norm scales and biases included (they are left out of
    the PCA, and once were zeroed at the origin, which made every point predict uniformly)."""
    from dataclasses import replace
    from conftest import tiny_config
    from ulviz import ModelConfig, open_run, train
    from ulviz.measure.landscape.runs import run_model
    from ulviz.measure.landscape.surfaces import _surface
    from ulviz.measure.trajectory import pca_plane
    cfg = replace(tiny_config(epochs=2), model=ModelConfig("cnn", width=4))
    train(cfg, tmp_path / "bn.h5")
    run = open_run(tmp_path / "bn.h5")
    plane = pca_plane([run])
    final = run.snapshot(-1)
    assert set(plane.origin) == set(run.param_names)
    for n in run.param_names:
        assert torch.equal(plane.origin[n], final[n].float()), n
    model = run_model(run)
    x, y = landscape_runs.run_data(run, "test", 64)
    land = _surface(model, (x, y), plane.directions, [np.array([0.0]), np.array([0.0])], plane.origin,
                    None, "cpu", None, None, None, None, {})
    expected = torch.nn.functional.cross_entropy(model(x), y).item()
    assert land.loss[0, 0] == pytest.approx(expected, rel=1e-5)
    assert land.loss[0, 0] < 0.99 * np.log(int(y.max()) + 1)  # not the uniform prediction


# -- the CPU loop over points of conv nets: channels-last, padded heads, in-place ReLUs ------------

class _WideSkip(torch.nn.Module):
    """16-channel convolutions (wide enough for channels-last), a residual add, torch.flatten and a
    10-class head: the loop's channels-last flatten, padded head and fx stages all take part."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.head = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.conv(h))
        return self.head(torch.flatten(h, 1))


def _wide_models():
    seq = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(32 * 8 * 8, 10))
    return {"sequential": seq, "skip": _WideSkip()}


@pytest.mark.parametrize("kind", ["sequential", "skip"])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("layer", [None, "conv2"])
def test_cpu_loop_over_conv_points_equals_hand_loaded_weights(monkeypatch, kind, channels_last, layer):
    monkeypatch.setattr(evaluation, "_CHANNELS_LAST", channels_last)
    torch.manual_seed(4)
    model = _wide_models()[kind].double().eval()
    x, y = torch.rand(30, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (30,))
    # a direction on the second convolution alone: the loop then starts at that layer's output
    # (a ReLU that may run in place on our buffer); on every weight it starts after the stem
    name = None if layer is None else ("2.weight" if kind == "sequential" else "conv.weight")
    before = _state(model)
    land = surfaces.plane(model, (x, y), resolution=5, span=0.7, seed=2, layer=name, device="cpu")
    assert _identical(model, before)
    with torch.no_grad():
        assert land.loss[2, 2] == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-12)
    _assert_points_by_hand(land, model, x, y, [(0, 4), (1, 1), (4, 0), (3, 2)], tol=1e-12)


def test_channels_last_is_chosen_for_wide_convolutions_only(monkeypatch):
    monkeypatch.setattr(evaluation, "_CHANNELS_LAST", None)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))

    def evaluator(model):
        dirs = [directions.random_direction(model, seed=s) for s in (0, 1)]
        return evaluation._Evaluator(model, directions._params(model), dirs, x, y, batch_size=None, device=torch.device("cpu"),
                            memory_bytes=None)

    wide = evaluator(_wide_models()["sequential"].eval())
    assert wide.mode == "loop" and wide.channels_last
    assert wide.rest[3].__class__.__name__ == "_FlattenChannelsLast"  # the flatten before the head
    assert isinstance(wide.rest[4], evaluation._PaddedLinear)  # 10 outputs computed as 16
    assert wide.rest[0].inplace  # the ReLU after the stem runs on our own buffer
    narrow = evaluator(create_model("lenet5", (1, 8, 8), 10).eval())
    assert narrow.mode == "loop" and not narrow.channels_last


def test_padded_linear_is_the_linear():
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 10).double()
    padded = evaluation._PaddedLinear(layer)
    x = torch.randn(7, 20, dtype=torch.float64)
    assert torch.allclose(padded(x), layer(x), atol=1e-14)
    with torch.no_grad():  # the loop writes the wrapped layer's weights: the next call sees them
        layer.weight.mul_(-2)
    assert torch.allclose(padded(x), layer(x), atol=1e-14)


def test_settled_allocator_keeps_freed_blocks():
    """Once a computation on the CPU is set up (compute_device: what training, SAL, poisons and
    landscapes call), making and dropping 8 MB tensors costs no fresh pages: glibc's malloc
    reuses the freed heap. (Without it a fresh process usually faults all 4,096 pages of the two
    tensors in at every step, though not always: that depends on what it freed before.)"""
    import subprocess
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc only")
    code = """
import resource, torch
from ulviz.core.devices import compute_device
assert compute_device("cpu").type == "cpu"
for step in range(14):
    if step == 4:  # the heap has grown to its size by then
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(1 << 21)  # 8 MB, written: its pages are touched
    b = torch.ones(1 << 21)
    del a, b
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 10)
"""
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert int(out.stdout.strip()) < 100  # against 4,096 when every step faults its pages in
