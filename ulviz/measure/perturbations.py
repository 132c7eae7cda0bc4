"""What a protection looks like: the perturbation a method adds to the training images, measured.

- its **norms** per image: L-inf, L2 and L0 (the share of entries it changes);
- its **amplitude spectrum** (2-D FFT per channel, averaged over images): synthetic shortcuts
  (LSP patches, OPS pixels, class-wise noise) put their energy at other frequencies than natural
  image edits, the argument of image shortcut squeezing (ISS, Liu et al. 2023) for choosing a
  compression or a grayscale filter as the defense; summed as the share of energy below a cutoff;
- whether it is **class-wise**: the share of its variance explained by the class means (1 = every
  image of a class carries the same perturbation);
- **shortcut strength** in one number: the held-out accuracy of a logistic regression fitted on
  the perturbations alone (no image): near 1 when the perturbation alone names the class, near
  chance (1 / classes) when it carries no class information.

Arrays in, numbers out; the protected images of a run come from one helper,
:func:`protected_images`, the way post-hoc SAL gets what a run trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core.errors import UlvizError

LOW_CUTOFF = 0.25  # "low frequency": radius up to a quarter of the Nyquist radius (a common ISS-style split)


def protected_images(run):
    """(clean Dataset, protected training images as a float32 array N x C x H x W) of a run file:
    the images its protection made, before the task transformed them (rotations, masks) and
    without its trainer's defenses (the perturbation is the protection's, not the defense's).

    The one place that asks for a run's protected data: the lead switches it to the stored
    protections of ``trainset.run_training_data`` when that exists."""
    from ..protect import trainset
    from ..data.datasets import load_dataset

    clean = load_dataset(run.config.data)
    if hasattr(trainset, "run_training_data"):  # stored protections, when the run file keeps them
        data = trainset.run_training_data(run, clean, protected=True)
        return clean, data.x_train.detach().cpu().numpy().astype(np.float32)
    config = replace(run.config, train=replace(run.config.train, task="classify", defenses=()))
    data = trainset.training_data(config, clean, protected=True)
    return clean, data.x_train.detach().cpu().numpy().astype(np.float32)


def perturbation(clean: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """protected - clean, checked to have the same shape (N x C x H x W)."""
    clean, protected = np.asarray(clean, dtype=np.float32), np.asarray(protected, dtype=np.float32)
    if clean.shape != protected.shape:
        raise UlvizError(f"protected images have shape {protected.shape}, the clean ones {clean.shape}")
    return protected - clean


# -- norms -------------------------------------------------------------------------------------

def norms(delta: np.ndarray, tol: float = 1e-6) -> dict[str, np.ndarray]:
    """Per image: ``linf`` (largest change of one entry, in [0, 1] pixel units), ``l2`` (over all
    its entries) and ``l0`` (share of its entries changed by more than `tol`)."""
    flat = np.asarray(delta, dtype=np.float64).reshape(len(delta), -1)
    return {"linf": np.abs(flat).max(axis=1), "l2": np.sqrt((flat ** 2).sum(axis=1)),
            "l0": (np.abs(flat) > tol).mean(axis=1)}


# -- spectrum ----------------------------------------------------------------------------------

def amplitude_spectrum(delta: np.ndarray) -> np.ndarray:
    """Mean |FFT2| over images and channels (H x W), zero frequency in the centre."""
    d = np.asarray(delta, dtype=np.float64)
    amp = np.abs(np.fft.fft2(d, axes=(-2, -1))).mean(axis=(0, 1))
    return np.fft.fftshift(amp)


def _radius(shape: tuple[int, int]) -> np.ndarray:
    """Each centred frequency's distance from zero as a fraction of the Nyquist radius (0.5 cycles/px)."""
    fy = np.fft.fftshift(np.fft.fftfreq(shape[0]))
    fx = np.fft.fftshift(np.fft.fftfreq(shape[1]))
    return np.hypot(*np.meshgrid(fy, fx, indexing="ij")) / 0.5


def low_frequency_share(delta: np.ndarray, cutoff: float = LOW_CUTOFF) -> float:
    """Share of the perturbation's energy (sum of |FFT2|^2 over images and channels) at
    frequencies up to `cutoff` x Nyquist, the zero frequency (the mean shift) included."""
    d = np.asarray(delta, dtype=np.float64)
    power = (np.abs(np.fft.fftshift(np.fft.fft2(d, axes=(-2, -1)), axes=(-2, -1))) ** 2).sum(axis=(0, 1))
    total = power.sum()
    if total == 0:
        return float("nan")
    return float(power[_radius(power.shape) <= cutoff].sum() / total)


def radial_profile(spectrum: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres as a fraction of Nyquist, mean amplitude in each ring) of a centred spectrum;
    the corners past Nyquist (radius up to sqrt 2) fall in the last bins."""
    r = _radius(spectrum.shape).ravel()
    edges = np.linspace(0, r.max() + 1e-9, bins + 1)
    which = np.digitize(r, edges) - 1
    s = np.asarray(spectrum, dtype=np.float64).ravel()
    means = np.array([s[which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    return (edges[:-1] + edges[1:]) / 2, means


# -- class structure -----------------------------------------------------------------------------

def classwise_share(delta: np.ndarray, labels: np.ndarray) -> float:
    """Share of the perturbations' total variance explained by their class means (between-class
    sum of squares / total): 1 when every image of a class has the same perturbation (class-wise),
    near 0 when the perturbation ignores the class. NaN for a zero perturbation."""
    flat = np.asarray(delta, dtype=np.float64).reshape(len(delta), -1)
    y = np.asarray(labels).ravel()
    centred = flat - flat.mean(axis=0)
    total = (centred ** 2).sum()
    if total == 0:
        return float("nan")
    between = sum(int((y == c).sum()) * ((centred[y == c].mean(axis=0)) ** 2).sum() for c in np.unique(y))
    return float(between / total)


CLASSWISE_AT = 0.5  # class-wise when the class means explain most of the variance (clipping to [0, 1]
# makes a class-wise pattern image-dependent at the edges: LSP and OPS measure 0.84 and 0.89, not 1)


def separability(delta: np.ndarray, labels: np.ndarray, *, limit: int = 1500, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression that predicts the class from the perturbation
    alone (at most `limit` images, 2/3 to fit, 1/3 to score, stratified): the shortcut's strength
    in one number. Chance is 1 / classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    flat = np.asarray(delta, dtype=np.float64).reshape(len(delta), -1)
    y = np.asarray(labels).ravel()
    if len(np.unique(y)) < 2:
        raise UlvizError("separability needs images of at least two classes")
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(y))[:limit]
    flat, y = flat[keep], y[keep]
    scale = np.abs(flat).max()
    flat = flat / scale if scale > 0 else flat  # a common scale: L-inf and L0 perturbations differ by orders
    fit_x, test_x, fit_y, test_y = train_test_split(flat, y, test_size=1 / 3, random_state=seed, stratify=y)
    model = LogisticRegression(max_iter=300, C=1.0).fit(fit_x, fit_y)
    return float(model.score(test_x, test_y))


# -- a gallery -----------------------------------------------------------------------------------

def gallery_indices(labels: np.ndarray, per_class: int = 1) -> list[int]:
    """The first `per_class` images of every class, class by class."""
    y = np.asarray(labels).ravel()
    return [int(i) for c in np.unique(y) for i in np.flatnonzero(y == c)[:per_class]]


def amplified(delta: np.ndarray) -> np.ndarray:
    """Perturbations mapped to [0, 1] for display, 0.5 = unchanged, on one scale for all of them
    (the largest |change| reaches 0 or 1), so a weaker one looks weaker."""
    d = np.asarray(delta, dtype=np.float64)
    peak = np.abs(d).max()
    return np.full_like(d, 0.5) if peak == 0 else 0.5 + d / (2 * peak)


@dataclass
class PerturbationReport:
    """Everything the Perturbations page shows of one run's protection."""

    clean: np.ndarray  # gallery images, clean (k x C x H x W)
    protected: np.ndarray  # the same, protected
    delta: np.ndarray  # their perturbations
    gallery_labels: np.ndarray  # their classes
    spectrum: np.ndarray  # mean amplitude spectrum (H x W), centred
    low_share: float  # energy share at low frequencies
    norms: dict[str, np.ndarray]  # per image of the training set
    classwise: float  # variance share of the class means
    separability: float  # logistic regression on perturbations alone, held-out accuracy
    chance: float  # 1 / classes
    changed: float  # share of training images the protection changed (its poison ratio, measured)


def report(clean: np.ndarray, protected: np.ndarray, labels: np.ndarray, per_class: int = 1,
           limit: int = 1500) -> PerturbationReport:
    """The page's numbers from clean and protected training images (N x C x H x W) and labels.
    Spectrum, class structure and separability use the images the protection changed."""
    delta = perturbation(clean, protected)
    y = np.asarray(labels).ravel()
    touched = np.abs(delta.reshape(len(delta), -1)).max(axis=1) > 0
    if not touched.any():
        raise UlvizError("the protected images equal the clean ones: no perturbation to show")
    d, yt = delta[touched], y[touched]
    pick = gallery_indices(y, per_class)
    return PerturbationReport(
        clean=np.asarray(clean)[pick], protected=np.asarray(protected)[pick], delta=delta[pick],
        gallery_labels=y[pick], spectrum=amplitude_spectrum(d), low_share=low_frequency_share(d),
        norms=norms(d), classwise=classwise_share(d, yt),
        separability=separability(d, yt, limit=limit) if len(np.unique(yt)) > 1 else float("nan"),
        chance=1 / len(np.unique(y)), changed=float(touched.mean()))


def run_report(run, per_class: int = 1, limit: int = 1500) -> PerturbationReport:
    """:func:`report` of a run file's protection (its protected images from :func:`protected_images`)."""
    if run.config.poison.method == "clean":
        raise UlvizError(f"{run.name} is a clean run: it has no perturbation")
    clean, protected = protected_images(run)
    return report(clean.x_train.numpy(), protected, clean.y_train.numpy(), per_class, limit)


def summary_row(r: PerturbationReport) -> dict[str, float]:
    """One table row of a report: the norms' medians and maxima, and the three scores."""
    return {"L-inf (max)": float(r.norms["linf"].max()), "L2 (median)": float(np.median(r.norms["l2"])),
            "L0 (median share)": float(np.median(r.norms["l0"])), "low-frequency energy": r.low_share,
            "class-wise share": r.classwise, "class-wise": bool(r.classwise >= CLASSWISE_AT),
            "separability": r.separability, "chance": r.chance, "images changed": r.changed}
