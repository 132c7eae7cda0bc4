"""Teaching: unlearnable examples on a model with two weights, where the plane is the whole weight space."""
import streamlit as st

from ulviz.app import plots, ui
from ulviz.app.teaching import ToyConfig, binomial_se, expected_accuracy, lesson

ui.page("Teaching: a two-weight loss landscape",
        "Logistic regression with two weights and no bias, so the plane below is the whole weight space and "
        "every loss shown is exact. Two Gaussian classes differ only along x1 (the true feature); the poison "
        "adds a class-wise shortcut along x2 to the training points, as unlearnable examples add class-wise "
        "noise to images. Gradient descent starts from the same weights on clean and on poisoned data; watch "
        "where each path goes, what it does to the accuracy on clean test data, and how each weight's "
        "Sharpness-Aware Learnability (SAL) fades. Every slider recomputes everything in a fraction of a second.")

d = ToyConfig()
sb = st.sidebar
sb.subheader("Poison")
kind = sb.radio("Kind", ["shortcut", "shift"], format_func={
    "shortcut": "shortcut: x2 = ±strength (noise-free)", "shift": "shift: x2 += ±strength (noise kept)"}.get,
    key="teach_kind", help="Class +1 gets +strength, class −1 gets −strength, on the second axis only.")
strength = sb.slider("Strength", 0.0, 5.0, d.poison_strength, 0.25, key="teach_strength")
fraction = sb.slider("Poisoned fraction of the training set", 0.0, 1.0, d.poisoned_fraction, 0.05,
                     key="teach_fraction")
sb.subheader("Gradient descent")
lr = sb.select_slider("Learning rate", [0.05, 0.1, 0.2, 0.5, 1.0, 2.0], value=d.lr, key="teach_lr")
steps = sb.slider("Steps", 10, 300, d.steps, 10, key="teach_steps")
w1_0 = sb.slider("Start w1", -3.0, 3.0, d.start[0], 0.1, key="teach_w1")
w2_0 = sb.slider("Start w2", -3.0, 3.0, d.start[1], 0.1, key="teach_w2")
sb.subheader("Data and display")
separation = sb.slider("Class separation (means at ±separation on x1, noise 1)", 0.25, 2.0, d.separation, 0.25,
                       key="teach_sep")
seed = sb.number_input("Seed", 0, 10_000, d.seed, key="teach_seed")
eps = sb.select_slider("SAL radius ε (relative to |w_i|)", [0.01, 0.02, 0.05, 0.1, 0.2], value=d.eps, key="teach_eps")
log_scale = sb.checkbox("Log colour scale", value=True, key="teach_log")

cfg = ToyConfig(separation=separation, poison_kind=kind, poison_strength=strength, poisoned_fraction=fraction,
                lr=lr, steps=steps, start=(w1_0, w2_0), eps=eps, seed=int(seed))


@st.cache_data(show_spinner=False, max_entries=64)
def compute(cfg: ToyConfig):
    return lesson(cfg)


les = compute(cfg)
best = float(expected_accuracy([1.0, 0.0], cfg.separation, cfg.noise)[0])
clean_end, poisoned_end = les.path["clean"][-1], les.path["poisoned"][-1]

n_test = len(les.data.y_test)
se = binomial_se(best, n_test)
clean_acc, poisoned_acc = les.test_acc['clean'][-1], les.test_acc['poisoned'][-1]
cols = st.columns(3)
cols[0].metric("Clean-test accuracy, trained on clean data", f"{clean_acc:.3f} ± {binomial_se(clean_acc, n_test):.3f}",
               help=f"On a test set of {n_test} points; ± one binomial standard error.")
cols[1].metric("Clean-test accuracy, trained on poisoned data", f"{poisoned_acc:.3f} ± {binomial_se(poisoned_acc, n_test):.3f}",
               delta=f"{poisoned_acc - clean_acc:+.3f}")
cols[2].metric("Best a linear model can do (expected)", f"{best:.3f}",
               help="Expected accuracy on clean data of the best linear model (its weight along x1, the true "
                    "feature, only), for this class separation and noise: over infinitely many test points.")
st.caption(
    f"Accuracies are fractions of a finite test set of {n_test} points, so they scatter around their expected value "
    f"with a binomial standard error √(p(1−p)/n) ≈ {se:.3f} here: a measured accuracy can land above the best "
    f"expected one ({best:.3f}) by chance. Within about two standard errors ({best - 2 * se:.3f} to "
    f"{best + 2 * se:.3f}) the clean model is as good as a linear model can be.")

ui.chart(plots.teaching_surfaces(les.w1, les.w2, les.surface, les.path, log_scale), "teaching-weight-space")
st.caption(
    "Each point of the plane is a model; the colour is its exact mean loss on that panel's training data, on one "
    "colour scale for both. Both paths start at the star. On clean data the bowl's bottom lies on the w1 axis "
    "(the true feature, w2 ≈ 0) and descent walks there. On poisoned data the loss falls away along the w2 axis: "
    "the shortcut is the easier way down, and the path takes it. The dotted line is the other panel's path. "
    f"Here: clean ends at w = ({clean_end[0]:.2f}, {clean_end[1]:.2f}), poisoned at "
    f"({poisoned_end[0]:.2f}, {poisoned_end[1]:.2f}).")

left, right = st.columns(2)
with left:
    ui.chart(plots.teaching_accuracy(les.test_acc, les.train_acc, best), "teaching-accuracy")
    st.caption(
        "Solid: accuracy on clean test data (no shortcut); dashed: on the data the path trained on. With a strong "
        "shortcut on every point, the poisoned path fits its training data perfectly while its clean-test "
        "accuracy stays near where it started: once the shortcut has driven the training loss to zero, nothing "
        "moves w1 any more. Lower the poisoned fraction and the clean points keep pushing w1: partial poisoning "
        "barely hurts.")
with right:
    ui.chart(plots.teaching_sal({k: v.sal for k, v in les.sal.items()}), "teaching-sal")
    st.caption(
        f"SAL of one weight: how far the training loss can still move (up or down) when only that weight moves "
        f"within ±{cfg.eps:g}·|w_i| (exact here; on networks, per layer). On poisoned data the true feature's "
        "weight w1 stops being learnable: its SAL falls far below its clean value within about ten steps. That loss of "
        "learnability, counted layer by layer, is what the Unlearnable Distance measures. A weight at 0 has "
        "SAL 0 (its radius is 0); values below 1e-8 are drawn at 1e-8.")

ui.chart(plots.teaching_data({"clean": les.data.x_clean, "poisoned": les.data.x_poisoned}, les.data.y,
                             les.data.poisoned), "teaching-data")
st.caption(
    "The training points before and after poisoning (ringed: the poisoned ones). The classes overlap along x1, "
    "so no line separates clean data. The noise-free shortcut separates the poisoned points by a gap of "
    "twice its strength; a shift does so once it is a few times the noise (1). Only x2 changes, and the clean "
    "test set looks like the left panel: whatever the model learned from x2 is useless there.")
