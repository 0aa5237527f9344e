"""Linear probes on cached token features, with the statistics a reviewer asks for.

For every (target, layer, readout) a probe is fitted on standardized features with outer
cross-validation (``cv`` folds × ``seeds``). Inside each outer training fold the regularization
strength is chosen by an inner stratified CV. Reported per probe:

* ``metric``: accuracy, balanced accuracy and macro-F1 (categorical) or R² (continuous), the mean
  over folds × seeds, with ``ci95`` a Student-t interval over those folds × seeds (folds share
  training data, so the interval is a slightly optimistic summary of run-to-run spread);
* ``chance``: the majority-class rate (0.0 for R², the score of predicting the training mean);
* ``control_accuracy`` and ``selectivity`` after Hewitt & Liang (2019): the same probe — same
  features, same folds, same chosen regularization — trained on a *control task*. Hewitt & Liang map
  each word *type* to a fixed random class; for images the types are the dataset's identities (or
  subjects) or, where identities never recur across the folds (identity-grouped folds) or the dataset
  has none, k-means clusters of the CNN stem features (``control_kinds``). Each type gets one random
  class drawn from the real label marginals, so a probe that merely memorises types scores high on the
  control and low in selectivity. ``control_kind`` names the control; ``permutation`` (a seeded
  permutation of the labels over single images: a random-guess baseline, not a control) is kept only
  on request. ``selectivity = accuracy − control_accuracy`` (R² for continuous targets).
* ``cv_groups``: the attribute the folds are grouped by (``identity``/``subject``; ``StratifiedGroupKFold``
  outer *and* inner splits, so no group is on both sides of any split) or None. A target that *is* the
  grouping attribute cannot be probed on unseen groups; it uses a within-group split (stratified folds,
  images of the same identities on both sides) and its rows say ``cv_scheme: "within-group"``.
* ``probe``: ``linear`` (logistic / ridge) or ``mlp`` (one hidden layer, sklearn ``MLPClassifier`` /
  ``MLPRegressor``, the same folds and control); with ``mdl=True`` also the online code length of the
  labels given the features (Voita & Titov 2020): ``mdl_bits``, ``uniform_bits`` and
  ``compression = uniform_bits / mdl_bits`` (1 = the features tell nothing about the labels).

Two engines fit the probes: ``sklearn`` (the reference: ``LogisticRegressionCV`` / ``RidgeCV``,
one problem at a time) and ``torch`` (every layer × readout × inner fold of a target is one design,
centred and rotated into the eigenbasis of its covariance; all designs × C values are solved at once
by a batched, diagonally preconditioned L-BFGS with one line search per problem, then the real and
control refits at the chosen C; ridge is solved in closed form through one eigendecomposition per
problem). The batched solver is hand-written because no library fits many independent logistic
regressions in one batched call. ``bench/bench_probe_sweep.py`` measures the agreement and the speed-up.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from train.errors import FerlensError, close_matches

if TYPE_CHECKING:  # pragma: no cover
    from .features import FeatureSet

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)  # inverse L2 strength, sklearn convention
DEFAULT_ALPHAS: tuple[float, ...] = (1e-1, 1.0, 10.0, 100.0, 1000.0)  # ridge penalties
KINDS = ("categorical", "continuous")
# The logistic solvers' stopping rule, the same for both engines: stop when the largest gradient entry is ≤ TOL
# (sklearn's lbfgs ``gtol``, on its objective) or after MAX_ITER iterations. Not sklearn's tol=1e-4: at C = 1 on
# features that barely encode a target the objective is flat (its curvature can be as low as 1 / (C n)), so a
# gradient of 1e-4 still leaves the weights, and up to 1.4 points of test accuracy, undetermined: at 1e-4 the two
# engines (and sklearn at 100 vs 1000 iterations) disagreed by that much on at-chance matrices of the demo's
# features. At 3e-5 they agree within 0.15 points there (bench/bench_probe_sweep.py, yaw bin and illumination on
# both demo runs); 1e-5 agrees exactly but costs the float32 torch engine 5× more iterations. MAX_ITER is a
# guard, not the stopping rule: at 300 sklearn's lbfgs still stopped short of TOL on the demo's expression
# features at C = 1 (1.7 points from the optimum, which the torch engine reached).
TOL = 3e-5
MAX_ITER = 1000
# The default linear engine: ≥ 3× sklearn on the demo's real features at the same accuracy, as
# bench/bench_probe_sweep.py measures on the machine it runs on (bench/results*.json, ``bench_probe_sweep``).
DEFAULT_ENGINE = "torch"
PRECOND_EVERY = 5  # passes between refreshes of batched_logreg's diagonal preconditioner
CLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
GROUP_ATTRS = ("identity", "subject")  # the attributes folds are grouped by by default, first present wins
CONTROL_KINDS = ("auto", "identity", "subject", "kmeans", "permutation")
PROBES = ("linear", "mlp")
# Voita & Titov (2020) online code: block boundaries as fractions of the data (the first block is sent uniformly)
MDL_BLOCKS: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
MDL_EPSILON = 1e-3  # probabilities are mixed with this much of the uniform code so unseen classes stay finite
MLP_HIDDEN = 128  # hidden units of the MLP probe
MLP_ALPHA = 1e-3  # its L2 penalty (fixed: no inner search; the question is capacity, not tuning)
SAMPLES_PER_TYPE = 40  # k-means control types: about as many images per type as SynthFER has per identity


# ----------------------------------------------------------------------------- small helpers

def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (degenerate when < 2 values)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2 or float(v.std(ddof=1)) == 0.0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, df=len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean - half, mean + half


def encode_target(values: Sequence[Any], kind: str) -> np.ndarray:
    """Categorical values → int64 codes 0..K-1 (sorted unique order); continuous → float64."""
    if kind not in KINDS:
        raise FerlensError(f"Unknown target kind '{kind}'; use one of {', '.join(KINDS)}.")
    arr = np.asarray(values)
    if kind == "continuous":
        return arr.astype(np.float64)
    _, codes = np.unique(arr.astype(str) if arr.dtype == object else arr, return_inverse=True)
    return codes.astype(np.int64).ravel()


def check_target(y: np.ndarray, *, kind: str, cv: int, name: str = "target") -> None:
    """Raise ``FerlensError`` when a target cannot be probed with ``cv``-fold cross-validation."""
    if cv < 2:
        raise FerlensError(f"--cv {cv} is too small; use at least 2 folds.")
    if len(y) < cv:
        raise FerlensError(f"Target '{name}' has {len(y)} samples, fewer than the {cv} CV folds; "
                           "use a larger split or a smaller --cv.")
    if kind == "continuous":
        if not np.all(np.isfinite(y)) or float(np.std(y)) == 0.0:
            raise FerlensError(f"Target '{name}' is constant or has missing values; drop it from --targets.")
        return
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise FerlensError(f"Target '{name}' has a single class in this split; drop it from --targets.")
    if counts.min() < cv:
        raise FerlensError(f"Target '{name}' has a class with only {counts.min()} samples, fewer than the "
                           f"{cv} CV folds; use a larger split, a smaller --cv, or drop the target.")


def control_labels(y: np.ndarray, seed: int, types: np.ndarray | None = None) -> np.ndarray:
    """Control-task labels (Hewitt & Liang 2019).

    Args:
        y: (n,) encoded target (int codes or floats).
        seed: control seed.
        types: (n,) type of each sample (identity, subject or k-means cluster). None: a seeded
            permutation of ``y`` (the ``permutation`` control).

    Returns:
        (n,) labels: every type maps to one fixed random class, the classes dealt so that the control keeps the
        real label marginals as closely as the type sizes allow (a continuous target: one value drawn from ``y``
        per type), so the labels depend on the type only.
    """
    rng = np.random.default_rng(10_007 + seed)
    if types is None:
        return rng.permutation(y)
    _, inverse = np.unique(np.asarray(types).astype(str), return_inverse=True)
    inverse = inverse.ravel()
    n_types = int(inverse.max()) + 1
    if not np.issubdtype(y.dtype, np.integer):
        return rng.choice(y, size=n_types)[inverse]
    # Types in random order, each to the class furthest below its share of the real label counts (ties at
    # random): the class is random per type, and with few large types (k-means, 20 identities) the control's
    # marginals — and so its majority rate — still match the real ones, which independent draws do not.
    deficit = np.bincount(y).astype(np.float64)
    sizes = np.bincount(inverse, minlength=n_types)
    out = np.empty(n_types, dtype=y.dtype)
    for t in rng.permutation(n_types):
        best = np.flatnonzero(deficit >= deficit.max() - 1e-9)
        out[t] = rng.choice(best)
        deficit[out[t]] -= sizes[t]
    return out[inverse]


def kmeans_types(features: np.ndarray, n_types: int | None = None, seed: int = 0) -> np.ndarray:
    """Control types for images without identities: k-means clusters of (standardized) stem features.

    Args:
        features: (n, C) e.g. the GAP of the CNN stage that feeds the tokens.
        n_types: clusters (default: about ``SAMPLES_PER_TYPE`` images each, 10..300).

    Returns:
        (n,) int cluster ids.
    """
    from sklearn.cluster import KMeans

    X = np.asarray(features, dtype=np.float64)
    X = (X - X.mean(0)) / np.where(X.std(0) < 1e-12, 1.0, X.std(0))
    k = n_types or int(min(300, max(10, len(X) // SAMPLES_PER_TYPE)))
    k = max(2, min(k, len(X) // 2))
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(X).astype(np.int64)


def check_groups(groups: np.ndarray, cv: int, name: str = "group") -> None:
    """Raise ``FerlensError`` when grouped ``cv``-fold CV is impossible (fewer groups than folds)."""
    n_groups = len(np.unique(np.asarray(groups).astype(str)))
    if n_groups < cv:
        raise FerlensError(f"Only {n_groups} distinct '{name}' values for {cv} grouped folds; use a smaller --cv, "
                           "a larger split, or --group none.")


def chance_level(y: np.ndarray, kind: str) -> float:
    """Majority-class rate (categorical) or 0.0, the R² of predicting the mean (continuous)."""
    if kind == "continuous":
        return 0.0
    return float(np.bincount(y).max() / len(y))


def _group_codes(groups: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()


def _outer_splits(y: np.ndarray, cv: int, seed: int, kind: str, groups: np.ndarray | None = None):
    """Outer folds: stratified (categorical) / plain K-fold, or group-disjoint when ``groups`` is given."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if groups is not None:
        g = _group_codes(groups)
        splitter = (StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed) if kind == "categorical"
                    else GroupKFold(n_splits=cv, shuffle=True, random_state=seed))
        with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits" is fine
            warnings.simplefilter("ignore", UserWarning)
            return list(splitter.split(np.zeros(len(y)), y, g))
    splitter = (StratifiedKFold if kind == "categorical" else KFold)(n_splits=cv, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def _inner_splits(y: np.ndarray, inner_cv: int, seed: int, kind: str, groups: np.ndarray | None = None):
    """Inner folds for choosing the penalty inside one outer training fold (group-disjoint when grouped)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if groups is not None:
        g = _group_codes(groups)
        k = max(2, min(inner_cv, int(len(np.unique(g)))))
        splitter = (StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed) if kind == "categorical"
                    else GroupKFold(n_splits=k, shuffle=True, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return list(splitter.split(np.zeros(len(y)), y, g))
    if kind == "categorical":
        k = max(2, min(inner_cv, int(np.bincount(y)[np.bincount(y) > 0].min())))
        with warnings.catch_warnings():  # a class rarer than k folds is fine for choosing C
            warnings.simplefilter("ignore", UserWarning)
            return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(KFold(n_splits=inner_cv, shuffle=True, random_state=seed).split(np.zeros(len(y))))


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score both with the training statistics, computed in float64. A column constant on the training rows
    (up to float32 rounding: std ≤ 1e-6 of its magnitude, e.g. a CLS token before the first block) becomes
    exactly zero on both sides, so it carries no signal and no rounding noise into the probe."""
    train64 = np.asarray(train, dtype=np.float64)
    mean = train64.mean(0)
    std = train64.std(0)
    const = std <= 1e-6 * np.maximum(np.abs(mean), 1.0)
    std[const] = 1.0
    scale = (1.0 / std) * ~const  # 0 for constant columns
    out_train = ((train64 - mean) * scale).astype(np.float32)
    out_test = ((np.asarray(test, dtype=np.float64) - mean) * scale).astype(np.float32)
    return out_train, out_test


# ----------------------------------------------------------------------------- engines

@dataclass
class ProbeProblem:
    """One outer fold for several feature matrices that share labels and splits.

    Attributes:
        x_train: list of P standardized arrays, each (n_train, D_p).
        x_test: list of P standardized arrays, each (n_test, D_p).
        y_train: (n_train,) real labels; ``c_train`` the control labels of the same samples.
        n_classes: K (categorical) or 0 (continuous).
        inner: inner CV splits of the training fold, list of (train_idx, val_idx).
    """

    x_train: list[np.ndarray]
    x_test: list[np.ndarray]
    y_train: np.ndarray
    c_train: np.ndarray
    n_classes: int
    inner: list[tuple[np.ndarray, np.ndarray]]


def _sklearn_classify(prob: ProbeProblem, Cs: Sequence[float], seed: int, max_iter: int, tol: float):
    """Reference engine: LogisticRegressionCV per feature matrix, then the control at the chosen C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    preds, cpreds, chosen = [], [], []
    with warnings.catch_warnings():  # a problem that reaches max_iter stops there, as the torch engine's does
        warnings.simplefilter("ignore", ConvergenceWarning)
        for xtr, xte in zip(prob.x_train, prob.x_test):
            clf = LogisticRegressionCV(Cs=list(Cs), cv=prob.inner, l1_ratios=(0.0,), scoring="accuracy",
                                       max_iter=max_iter, tol=tol, use_legacy_attributes=False).fit(xtr, prob.y_train)
            preds.append(clf.predict(xte))
            cpreds.append(_fit_predict(lambda: LogisticRegression(C=float(clf.C_), max_iter=max_iter, tol=tol),
                                       xtr, prob.c_train, xte))
            chosen.append(float(clf.C_))
    return np.stack(preds), np.stack(cpreds), np.asarray(chosen)


def _sklearn_regress(prob: ProbeProblem, alphas: Sequence[float], seed: int, max_iter: int, tol: float):
    """Reference engine: RidgeCV per feature matrix, then the control at the chosen alpha."""
    from sklearn.linear_model import Ridge, RidgeCV

    preds, cpreds, chosen = [], [], []
    for xtr, xte in zip(prob.x_train, prob.x_test):
        reg = RidgeCV(alphas=list(alphas), cv=prob.inner).fit(xtr, prob.y_train)
        ctrl = Ridge(alpha=float(reg.alpha_)).fit(xtr, prob.c_train)
        preds.append(reg.predict(xte))
        cpreds.append(ctrl.predict(xte))
        chosen.append(float(reg.alpha_))
    return np.stack(preds), np.stack(cpreds), np.asarray(chosen)


def _fit_predict(make: Callable, xtr: np.ndarray, labels: np.ndarray, xte: np.ndarray) -> np.ndarray:
    """Fit ``make()`` on (xtr, labels) and predict xte; a single-class label set (a type control can map
    every type of a small training fold to one class) predicts that class."""
    if np.issubdtype(labels.dtype, np.integer) and len(np.unique(labels)) < 2:
        return np.full(len(xte), labels[0])
    return make().fit(xtr, labels).predict(xte)


def _mlp(kind: str, seed: int):
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    cls = MLPClassifier if kind == "categorical" else MLPRegressor
    return cls(hidden_layer_sizes=(MLP_HIDDEN,), alpha=MLP_ALPHA, max_iter=200, random_state=seed)


def _mlp_solve(kind: str):
    """MLP probe engine (sklearn): one hidden layer, fixed penalty, fitted on the real and control labels."""

    def solve(prob: ProbeProblem, grid: Sequence[float], seed: int, max_iter: int, tol: float):
        from sklearn.exceptions import ConvergenceWarning

        preds, cpreds = [], []
        with warnings.catch_warnings():  # 200 Adam epochs; a probe that has not converged is still a probe
            warnings.simplefilter("ignore", ConvergenceWarning)
            for xtr, xte in zip(prob.x_train, prob.x_test):
                preds.append(_fit_predict(lambda: _mlp(kind, seed), xtr, prob.y_train, xte))
                cpreds.append(_fit_predict(lambda: _mlp(kind, seed), xtr, prob.c_train, xte))
        return np.stack(preds), np.stack(cpreds), np.full(len(prob.x_train), MLP_ALPHA)

    return solve


@contextlib.contextmanager
def _torch_threads(n: int = 1):
    """Run torch with ``n`` intra-op threads. L-BFGS does many tiny vector ops (dot products on the
    flattened weights); with several OpenMP threads on a busy machine each costs milliseconds instead of
    microseconds, so both engines run single-threaded (measured: 24 ms vs 0.05 ms per dot); BLAS
    pools (numpy / scipy, used by sklearn) are limited the same way."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old)


def _stack(xs: list[np.ndarray]):
    """Zero-pad P feature matrices to a common width: (P, n, Dmax) float32 tensor.

    Zero columns of standardized features stay at zero weight under the L2 penalty, so padding does
    not change any solution.
    """
    import torch

    dmax = max(x.shape[1] for x in xs)
    out = torch.zeros(len(xs), xs[0].shape[0], dmax)
    for p, x in enumerate(xs):
        out[p, :, : x.shape[1]] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return out


@dataclass
class Designs:
    """G design matrices (rows of one feature matrix each), centred and rotated into the eigenbasis of
    their covariance, for ``batched_logreg``.

    Rotating centred features by an orthogonal V leaves the L2 penalty unchanged and makes the multinomial
    Hessian at W = 0 diagonal per feature (``evals``), so one eigendecomposition per design preconditions
    every C and every label set fitted on it.

    Attributes:
        Z: (G, n, D) rotated centred rows; padded rows (beyond a design's own n) and columns are 0.
        w: (G, n) row weights, 1/n_g on a design's rows, 0 on padding.
        evals: (G, D) eigenvalues of the covariance ``sum_i w_i x_i x_iᵀ`` (ascending).
        V: (G, D, D) its eigenvectors (columns): original = V @ rotated.
        mu: (G, D) the rows' means.
    """

    Z: Any
    w: Any
    evals: Any
    V: Any
    mu: Any

    def to_original(self, W):
        """Rotated (G, M, K, D+1) weights (bias last) → original-space W (G, M, K, D), b (G, M, K)."""
        G, M, K, D1 = W.shape
        Wo = (W[..., :-1].reshape(G, M * K, D1 - 1) @ self.V.transpose(1, 2)).view(G, M, K, D1 - 1)
        return Wo, W[..., -1] - (Wo * self.mu[:, None, None]).sum(-1)

    def to_rotated(self, Wo, bo):
        """Original-space W (G, M, K, D), b (G, M, K) → rotated (G, M, K, D+1) with the bias last."""
        import torch

        G, M, K, D = Wo.shape
        Wr = (Wo.reshape(G, M * K, D) @ self.V).view(G, M, K, D)
        return torch.cat([Wr, (bo + (Wo * self.mu[:, None, None]).sum(-1))[..., None]], -1)


def designs(xs: Sequence[Any], rows: Sequence[np.ndarray]) -> Designs:
    """``Designs`` of ``xs[g][rows[g]]`` (each xs[g] a (n_g, D_g) float32 tensor), padded to common n and D.

    Zero-padded columns have eigenvalue 0 and no gradient, so under the L2 penalty their weights stay 0
    and padding changes no solution.
    """
    import torch

    G, n, D = len(xs), max(len(r) for r in rows), max(int(x.shape[1]) for x in xs)
    X = torch.zeros(G, n, D)
    w = torch.zeros(G, n)
    for g, (x, r) in enumerate(zip(xs, rows)):
        X[g, : len(r), : x.shape[1]] = x[torch.as_tensor(np.asarray(r, dtype=np.int64))]
        w[g, : len(r)] = 1.0 / len(r)
    mu = torch.einsum("gn,gnd->gd", w, X)
    Xc = (X - mu[:, None]) * (w > 0)[..., None]
    evals, V = torch.linalg.eigh((Xc.transpose(1, 2) @ (Xc * w[..., None])).double())  # float64: tiny eigenvalues
    V = V.float()
    return Designs(Z=Xc @ V, w=w, evals=evals.clamp_min(0.0).float(), V=V, mu=mu)


def batched_logreg(d: Designs, Y, lam, n_classes: int, max_iter: int = 100, tol: float = 1e-4, init=None,
                   history: int = 10, present=None, stats: dict | None = None):
    """Fit G × M independent L2-regularized multinomial logistic regressions at once.

    Problem (g, m) is fitted on design g (``Designs``: centred rows rotated into their covariance
    eigenbasis) with labels ``Y[g, m]`` and penalty ``lam[g, m]``; it minimizes
    ``sum_i w_gi CE(z_gi W + b, y_gmi) + lam/2 ||W||²`` (the bias unpenalized) — with ``lam = 1 / (C n_g)``
    sklearn's ``lbfgs`` objective divided by ``C n_g``.

    Each problem has its own L-BFGS (two-loop recursion, ``history`` pairs, Armijo backtracking, one
    batched loss-and-gradient evaluation per pass; a problem whose trial point fails the test retries with
    half the step on the next pass, so none waits for another's line search). The initial inverse Hessian
    is the inverse of the Hessian's diagonal in the eigenbasis, ``sum_i w_i z_ij² p_ik (1 − p_ik) + lam``,
    refreshed every ``PRECOND_EVERY`` passes at the current probabilities (projected onto weights that sum
    to zero over classes, where the optimum lies) and rescaled by the newest curvature pair: on the demo's
    correlated features this halves the iterations of the fixed Hessian-at-zero preconditioner and cuts
    those of the identity several-fold. A problem stops when its largest gradient entry in the *original*
    coordinates is ≤ ``tol`` — sklearn's ``lbfgs`` rule (``gtol``) on the same objective — or after
    ``max_iter`` iterations, or when an accepted step no longer lowers the loss (float32 precision); finished problems leave the batch (whole designs, or one C across all
    designs). Hand-written: neither torch nor scipy solves many independent problems with separate line
    searches in one call. Problems are laid out (G, M, K, ·) so that per-problem scalars and reductions
    run over contiguous memory.

    Args:
        d: G designs, Z (G, n, D).
        Y: (G, M, n) int64 labels (any class on padded rows).
        lam: (G, M) float penalties.
        n_classes: K.
        max_iter: L-BFGS iterations per problem.
        tol: gradient tolerance (max-abs, original coordinates) per problem.
        init: optional warm start in rotated coordinates (G, M, K, D+1), bias last.
        present: optional (G, M, K) bool, the classes problem (g, m) is fitted over (as sklearn fits a
            ``LogisticRegression`` over the classes its labels contain); the others get logit −∞.
        stats: filled with ``iters`` (G, M) and ``passes`` when given.

    Returns:
        (G, M, K, D+1) weights in rotated coordinates, the bias last (``Designs.to_original`` maps back).
    """
    import torch

    G0, n, D = d.Z.shape
    M0, K = Y.shape[1], n_classes
    dt = d.Z.dtype
    lam = lam.to(dt)
    pen = torch.cat([lam[..., None, None].expand(G0, M0, 1, D), torch.zeros(G0, M0, 1, 1, dtype=dt)], -1)
    keepk = None if present is None or bool(present.all()) else present[..., None].to(dt)  # (G, M, K, 1)
    x = torch.zeros(G0, M0, K, D + 1, dtype=dt) if init is None else init.to(dt).clone()
    if keepk is not None:
        x = x * keepk
    onehot = torch.nn.functional.one_hot(Y, K).to(dt).transpose(2, 3).contiguous()  # (G, M, K, n)
    # per design (dim 0 = g) and per problem (dims 0, 1 = g, m) tensors, compacted together
    des = {"Z": d.Z, "ZT": d.Z.transpose(1, 2).contiguous(), "Z2": d.Z * d.Z, "VT": d.V.transpose(1, 2).contiguous(),
           "w": d.w[:, None, None], "rows": torch.arange(G0)}
    st = {"onehot": onehot, "lam": lam, "pen": pen, "x": x, "cols": torch.arange(M0)[None].expand(G0, M0)}
    if keepk is not None:
        st["keepk"], st["off"] = keepk, (1 - keepk) * -1e4

    def loss_grad(x, want_h):  # x (G, M, K, D+1) -> loss (G, M), grad like x, diagonal Hessian like x or None
        g_, m_ = x.shape[:2]
        z = torch.bmm(x[..., :D].reshape(g_, m_ * K, D), des["ZT"]).view(g_, m_, K, n) + x[..., D:]
        if "off" in st:
            z = z + st["off"]
        zmax = z.amax(2, keepdim=True)
        e = torch.exp(z - zmax)
        s = e.sum(2, keepdim=True)
        p = e / s
        w, onehot = des["w"], st["onehot"]
        f = (((zmax + s.log()).squeeze(2) - (z * onehot).sum(2)) * w[:, :, 0]).sum(-1)
        r = (p - onehot) * w  # (G, M, K, n)
        gw = torch.bmm(r.view(g_, m_ * K, n), des["Z"]).view(g_, m_, K, D)
        grad = torch.cat([gw + st["lam"][..., None, None] * x[..., :D], r.sum(-1, keepdim=True)], -1)
        h = None
        if want_h:
            hw = p * (1 - p) * w
            h = torch.cat([torch.bmm(hw.view(g_, m_ * K, n), des["Z2"]).view(g_, m_, K, D), hw.sum(-1, keepdim=True)], -1)
            h = (h + st["pen"]).clamp_min_(1e-6).reciprocal_()
        return f + 0.5 * st["lam"] * x[..., :D].pow(2).sum((2, 3)), grad, h

    def precond(q):  # q (G, M, K, D+1) -> diag-Hessian⁻¹ q, projected to sum zero over classes
        out = q * st["hinv"]
        out = out - out.mean(2, keepdim=True)
        return out if keepk is None else out * st["keepk"]

    def gmax(grad):  # (G, M): largest |gradient| entry in the original coordinates
        g_, m_ = grad.shape[:2]
        go = torch.bmm(grad[..., :D].reshape(g_, m_ * K, D), des["VT"]).view(g_, m_, K * D).abs().amax(-1)
        return torch.maximum(go, grad[..., D].abs().amax(-1))

    def dot(a, b):
        return (a * b).sum((2, 3))

    def col(t):  # (G, M) -> (G, M, 1, 1)
        return t[..., None, None]

    f, grad, st["hinv"] = loss_grad(x, True)
    st.update(f=f, grad=grad, gamma=torch.ones(G0, M0, dtype=dt), step=torch.ones(G0, M0, dtype=dt),
              iters=torch.zeros(G0, M0, dtype=torch.long), active=gmax(grad) > tol)
    hist: list[dict[str, Any]] = []  # L-BFGS pairs, newest last: s, y (G, M, K, D+1), rho (G, M)
    out = x.clone()
    iters_out = torch.zeros(G0, M0, dtype=torch.long)
    passes, since = 0, 0

    def retire(done):  # write finished problems (bool (G, M) of the current batch) to the outputs
        rr = des["rows"][:, None].expand_as(done)[done]
        cc = st["cols"][done]
        out[rr, cc] = st["x"][done]
        iters_out[rr, cc] = st["iters"][done]

    for _ in range(2 * max_iter + 20):
        active = st["active"]
        g_, m_ = active.shape
        keep_g, keep_m = active.any(1), active.any(0)
        n_done = g_ * m_ - int(keep_g.sum()) * int(keep_m.sum())
        if n_done and (n_done * 4 >= g_ * m_ or not bool(active.any())):  # drop finished designs and C's
            retire(~(keep_g[:, None] & keep_m[None]))
            im = torch.nonzero(keep_m).squeeze(1)
            des = {k: v[keep_g] for k, v in des.items()}
            st = {k: v[keep_g].index_select(1, im) for k, v in st.items()}
            hist = [{k: v[keep_g].index_select(1, im) for k, v in h_.items()} for h_ in hist]
        if len(des["rows"]) == 0:
            break
        passes += 1
        x, grad, f, active = st["x"], st["grad"], st["f"], st["active"]
        gamma, step, iters = st["gamma"], st["step"], st["iters"]
        q = grad.clone()  # two-loop recursion, per problem
        alphas = []
        for h_ in reversed(hist):
            a = h_["rho"] * dot(h_["s"], q)
            q.sub_(col(a) * h_["y"])
            alphas.append(a)
        q = precond(q) * col(gamma)
        for h_, a in zip(hist, reversed(alphas)):
            q.add_(h_["s"] * col(a - h_["rho"] * dot(h_["y"], q)))
        slope = -dot(grad, q)  # the direction is -q
        bad = slope >= 0  # not a descent direction: preconditioned steepest descent for that problem
        if bool(bad.any()):
            pg = precond(grad)
            q = torch.where(col(bad), pg, q)
            slope = torch.where(bad, -dot(grad, pg), slope)
        x_try = x - col(step * active) * q
        want_h = since + 1 >= PRECOND_EVERY
        f_try, g_try, h_try = loss_grad(x_try, want_h)
        ok = active & (f_try <= f + 1e-4 * step * slope)
        okc = col(ok)
        s_k, y_k = (x_try - x) * okc, (g_try - grad) * okc
        sy = dot(s_k, y_k)
        curved = ok & (sy > 1e-10)
        hist.append({"s": s_k, "y": y_k, "rho": torch.where(curved, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))})
        if len(hist) > history:
            hist.pop(0)
        x = torch.where(okc, x_try, x)
        grad = torch.where(okc, g_try, grad)
        if want_h:
            st["hinv"] = torch.where(okc, h_try, st["hinv"])
            since = 0
        else:
            since += 1
        gamma = torch.where(curved, sy / dot(y_k, precond(y_k)).clamp_min(1e-30), gamma)
        iters = iters + ok
        step = torch.where(ok, torch.ones_like(step), step * 0.5)
        # an accepted step that did not lower the loss at all: the problem is at float32 precision (its gradient
        # cannot get below tol there); stop it rather than let it retry tiny steps until max_iter
        stalled = ok & (f_try >= f)
        active = active & (gmax(grad) > tol) & (iters < max_iter) & (step > 1e-6) & ~stalled
        st.update(x=x, grad=grad, f=torch.where(ok, f_try, f), gamma=gamma, step=step, iters=iters, active=active)
    if len(des["rows"]):
        retire(torch.ones_like(st["active"]))
    if keepk is not None:  # classes a problem was not fitted over are never predicted
        out[..., D] -= 1e4 * (1 - keepk[..., 0])
    if stats is not None:
        stats.update(passes=passes, iters=iters_out)
    return out


def _logreg_predict(X, W, b):
    """Class predictions (P, n, R) for X (P, n, D), W (P, R, K, D), b (P, R, K).

    Logits within float32 resolution of the largest count as tied and the lowest class wins, as an exact
    tie does in sklearn's float64 argmax: a probe on a constant readout (the CLS token before the first
    block) predicts the majority class of its training fold, and two classes with equal counts there tie
    exactly, which float32 rounding in the solver would otherwise break either way.
    """
    import torch

    P, R, K, D = W.shape
    logits = (X @ W.reshape(P, R * K, D).transpose(1, 2)).view(P, -1, R, K) + b[:, None]
    top = logits.amax(-1, keepdim=True)
    return (logits >= top - 1e-5 * top.abs().clamp_min(1.0)).to(torch.uint8).argmax(-1)


def _present(Y, K: int):
    """(G, M, n) labels (-1 on padding) → (G, M, K) bool: which classes each problem's labels contain."""
    import torch

    return (torch.nn.functional.one_hot(Y.clamp_min(0), K).bool() & (Y >= 0)[..., None]).any(2)


def _closed_form_start(d: Designs, Y, lam, K: int):
    """Warm start in rotated coordinates (G, M, K, D+1): the Newton step from W = 0 for the weights (the
    Hessian there is diagonal in the eigenbasis, ``(1/K)(I − 11ᵀ/K) e_j + lam``) and the log class priors
    for the bias. Y (G, M, n), lam (G, M)."""
    import torch

    G, M, n = Y.shape
    hot = torch.nn.functional.one_hot(Y.clamp_min(0), K).to(d.Z.dtype) * d.w[:, None, :, None]  # (G, M, n, K)
    ZtY = torch.bmm(hot.transpose(2, 3).reshape(G, M * K, n), d.Z).view(G, M, K, -1)
    W = (ZtY - ZtY.mean(2, keepdim=True)) / (d.evals[:, None, None] / K + lam[..., None, None])
    return torch.cat([W, torch.log(hot.sum(2).clamp_min(1e-3))[..., None]], -1)


def _torch_classify(prob: ProbeProblem, Cs: Sequence[float], seed: int, max_iter: int, tol: float):
    """Batched engine. Every (feature matrix, inner fold) is one design (centred, rotated into its covariance
    eigenbasis, shared by all C values); all C values of all designs are one ``batched_logreg`` call from a
    closed-form start; then (real, control) labels on each matrix's full training fold at its chosen C are
    a second call, the real problem warm-started from the mean of its inner-fold solutions (as sklearn's
    ``LogisticRegressionCV`` refits). K = 2 is fitted as sklearn's binary model (the same optimum as the
    multinomial one at twice the penalty); a control over fewer classes than the target is fitted over the
    classes it contains (as sklearn's ``LogisticRegression`` is), and one over a single class predicts it."""
    import torch

    K = prob.n_classes
    xs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in prob.x_train]
    P, F, n = len(xs), len(prob.inner), len(prob.y_train)
    y = torch.from_numpy(prob.y_train.astype(np.int64))
    Cs = sorted(float(c) for c in Cs)  # strongest penalty first: ties keep the simpler probe
    grid, A = torch.tensor(Cs), len(Cs)
    d = designs([x for x in xs for _ in range(F)], [tr for _ in xs for tr, _ in prob.inner])  # g = p F + f
    G, m, D = d.Z.shape
    Yin = torch.full((G, m), -1, dtype=torch.long)
    for g in range(G):
        tr = prob.inner[g % F][0]
        Yin[g, : len(tr)] = y[torch.from_numpy(tr)]
    Yin = Yin[:, None].expand(G, A, m)
    n_in = torch.tensor([float(len(tr)) for tr, _ in prob.inner]).repeat(P)  # (G,)
    lam = (2.0 if K == 2 else 1.0) / (grid[None] * n_in[:, None])  # (G, A)
    W = batched_logreg(d, Yin.clamp_min(0), lam, K, max_iter, tol, init=_closed_form_start(d, Yin, lam, K))
    Wo, bo = d.to_original(W)  # (G, A, K, D), (G, A, K)
    Wo, bo = Wo.view(P, F * A, K, D), bo.view(P, F * A, K)
    pred = _logreg_predict(_stack(prob.x_train), Wo, bo).view(P, n, F, A)
    val = torch.ones(F, n, dtype=torch.bool)
    for f, (tr, _) in enumerate(prob.inner):
        val[f, torch.from_numpy(tr)] = False
    correct = ((pred == y[None, :, None, None]) & val.T[None, :, :, None]).sum(1)  # (P, F, A)
    best = (correct / val.sum(1)[None, :, None]).mean(1).argmax(1)  # (P,) first max = strongest penalty
    pick = torch.arange(P)
    Wo, bo = Wo.view(P, F, A, K, D), bo.view(P, F, A, K)
    W0, b0 = Wo[pick, :, best].mean(1), bo[pick, :, best].mean(1)  # (P, K, D), (P, K)
    c = torch.from_numpy(prob.c_train.astype(np.int64))
    Y2 = torch.stack([y, c])[None].expand(P, 2, n).contiguous()  # (P, 2, n): real, control
    d2 = designs(xs, [np.arange(n)] * P)
    present = _present(Y2, K)  # (P, 2, K)
    k_c = int(present[0, 1].sum())
    scale = torch.tensor([2.0 if K == 2 else 1.0, 2.0 if k_c == 2 else 1.0])
    lam2 = scale[None] / (grid[best][:, None] * n)  # (P, 2)
    init = torch.cat([d2.to_rotated(W0[:, None], b0[:, None]), _closed_form_start(d2, Y2[:, 1:], lam2[:, 1:], K)], 1)
    Wf, bf = d2.to_original(batched_logreg(d2, Y2, lam2, K, max_iter, tol, init=init, present=present))
    out = _logreg_predict(_stack(prob.x_test), Wf, bf)  # (P, n_test, 2)
    cpred = out[..., 1].numpy() if k_c > 1 else np.full((P, out.shape[1]), int(prob.c_train[0]))
    return out[..., 0].numpy(), cpred, np.asarray(Cs)[best.numpy()]


def _ridge_path(X, y, alphas):
    """Closed-form ridge for several alphas: X (P, n, D) standardized, y (n, R) → W (P, A, D, R), b (R,)."""
    import torch

    ym = y.mean(0)
    xm = X.mean(1, keepdim=True)
    Xc = X - xm
    evals, evecs = torch.linalg.eigh(Xc.transpose(1, 2) @ Xc)  # (P, D), (P, D, D)
    proj = evecs.transpose(1, 2) @ (Xc.transpose(1, 2) @ (y - ym))  # (P, D, R)
    a = torch.as_tensor(alphas, dtype=X.dtype)
    scaled = proj[:, None] / (evals[:, None, :, None] + a[None, :, None, None])  # (P, A, D, R)
    W = evecs[:, None] @ scaled  # (P, A, D, R)
    b = ym - (xm[:, None] @ W).squeeze(2)  # (P, A, R)
    return W, b


def _torch_regress(prob: ProbeProblem, alphas: Sequence[float], seed: int, max_iter: int, tol: float):
    """Batched engine for ridge: closed form, alpha chosen by inner-CV R²."""
    import torch

    Xtr = _stack(prob.x_train).double()
    Xte = _stack(prob.x_test).double()
    y = torch.from_numpy(prob.y_train.astype(np.float64))
    P = Xtr.shape[0]
    score = torch.zeros(P, len(alphas), dtype=torch.float64)
    for tr, va in prob.inner:
        W, b = _ridge_path(Xtr[:, tr], y[tr, None], alphas)
        pred = (Xtr[:, None, va] @ W).squeeze(-1) + b  # (P, A, n_val)
        yv = y[va]
        score += 1 - ((pred - yv) ** 2).sum(-1) / ((yv - yv.mean()) ** 2).sum()
    best = score.argmax(1)  # (P,)
    Y2 = torch.stack([y, torch.from_numpy(prob.c_train.astype(np.float64))], 1)  # (n, 2)
    W, b = _ridge_path(Xtr, Y2, alphas)
    pred = (Xte[:, None] @ W) + b[:, :, None, :]  # (P, A, n_test, 2)
    pick = pred[torch.arange(P), best]  # (P, n_test, 2)
    return pick[..., 0].numpy(), pick[..., 1].numpy(), torch.as_tensor(alphas)[best].numpy()


# engine name -> (classify, regress); each takes (ProbeProblem, grid, seed, max_iter, tol) and returns
# (pred (P, n_test), control_pred (P, n_test), chosen_hyperparameter (P,))
def _single_threaded(fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        with _torch_threads(1):
            return fn(*args, **kwargs)
    wrapper.__doc__ = fn.__doc__
    return wrapper


ENGINES: dict[str, tuple[Callable, Callable]] = {
    "torch": (_single_threaded(_torch_classify), _single_threaded(_torch_regress)),
    "sklearn": (_single_threaded(_sklearn_classify), _single_threaded(_sklearn_regress)),
}


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise FerlensError(f"Unknown probe engine '{engine}'; use one of {', '.join(ENGINES)}."
                           + close_matches(engine, ENGINES))


def _check_probe(probe: str) -> None:
    if probe not in PROBES:
        raise FerlensError(f"Unknown probe family '{probe}'; use one of {', '.join(PROBES)}." + close_matches(probe, PROBES))


def _solvers(probe: str, engine: str) -> tuple[Callable, Callable]:
    """(classify, regress) for a probe family: the linear engines, or the MLP."""
    _check_probe(probe)
    if probe == "mlp":
        return _single_threaded(_mlp_solve("categorical")), _single_threaded(_mlp_solve("continuous"))
    _check_engine(engine)
    return ENGINES[engine]


# ----------------------------------------------------------------------------- MDL (online code)

def _prefix_proba(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, n_classes: int, probe: str, C: float,
                  seed: int) -> np.ndarray:
    """(n_te, K) class probabilities of a probe trained on one prefix of the online code.

    A prefix with a single class is coded by add-one (Laplace) class counts instead of a probe.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(ytr)
    if len(classes) < 2:
        counts = np.bincount(ytr, minlength=n_classes) + 1.0
        return np.tile(counts / counts.sum(), (len(xte), 1))
    model = _mlp("categorical", seed) if probe == "mlp" else LogisticRegression(C=C, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xtr, ytr)
    out = np.zeros((len(xte), n_classes))
    out[:, model.classes_] = model.predict_proba(xte)
    return out


def online_codelength(x: np.ndarray, y: np.ndarray, *, n_classes: int | None = None, seed: int = 0,
                      probe: str = "linear", C: float = 1.0,
                      blocks: Sequence[float] = MDL_BLOCKS) -> tuple[float, float]:
    """Online (prequential) code length of the labels given the features (Voita & Titov 2020).

    The samples are put in a seeded random order and cut at ``blocks`` (fractions of n); the first block
    is sent with the uniform code, every later block with a probe trained on all samples before it.
    Probabilities are mixed with ``MDL_EPSILON`` of the uniform code so a class the prefix has not seen
    costs finite bits. Written here: no library computes online code lengths.

    Args:
        x: (n, D) features; y: (n,) int labels 0..K-1.
        probe: ``linear`` (logistic regression at inverse penalty ``C``) or ``mlp``.

    Returns:
        (codelength in bits, uniform code length n log2 K in bits).
    """
    n = len(y)
    K = int(n_classes or int(y.max()) + 1)
    order = np.random.default_rng(20_011 + seed).permutation(n)
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    ends = sorted({min(n, max(1, int(round(f * n)))) for f in blocks} | {n})
    bits = ends[0] * np.log2(K)
    for start, stop in zip(ends[:-1], ends[1:]):
        xtr, xte = _standardize(x[:start], x[start:stop])
        p = (1 - MDL_EPSILON) * _prefix_proba(xtr, y[:start], xte, K, probe, C, seed) + MDL_EPSILON / K
        bits += float(-np.log2(p[np.arange(stop - start), y[start:stop]]).sum())
    return float(bits), float(n * np.log2(K))


# ----------------------------------------------------------------------------- scoring

def _fold_scores(y_true: np.ndarray, y_pred: np.ndarray, kind: str) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 (categorical) or R² (continuous) of one test fold.

    The arithmetic of sklearn's ``accuracy_score``, ``balanced_accuracy_score``, ``f1_score(average="macro",
    zero_division=0)`` and ``r2_score`` on one confusion matrix, written out because their per-call input
    validation (≈ 6 ms a call, three calls per fold and matrix) cost more than the batched probe fits
    themselves; ``tests/unit/probe/test_linear_engine.py`` checks the numbers against sklearn.
    """
    if kind == "continuous":
        y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
        res, tot = float(((y_true - y_pred) ** 2).sum()), float(((y_true - y_true.mean()) ** 2).sum())
        return {"r2": 1.0 - res / tot if tot > 0 else (1.0 if res == 0 else 0.0)}
    labels, codes = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]), return_inverse=True)
    k, t, p = len(labels), codes[: len(y_true)], codes[len(y_true):]
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp, n_true, n_pred = np.diag(cm).astype(np.float64), cm.sum(1), cm.sum(0)
    seen = n_true > 0
    return {"accuracy": float(tp.sum() / len(t)),
            "balanced_accuracy": float((tp[seen] / n_true[seen]).mean()),
            "macro_f1": float(np.mean(2 * tp / np.maximum(n_true + n_pred, 1)))}


def _dedupe(xs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """Unique feature matrices (by shape and content hash) and, per input, the index of its unique copy."""
    import hashlib

    seen: dict[tuple, int] = {}
    unique, where = [], []
    for x in xs:
        arr = np.ascontiguousarray(x)
        key = (arr.shape, str(arr.dtype), hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest())
        if key not in seen:
            seen[key] = len(unique)
            unique.append(x)
        where.append(seen[key])
    return unique, where


def evaluate_features(xs: Sequence[np.ndarray], y: np.ndarray, *, kind: str = "categorical", cv: int = 5,
                      seeds: Sequence[int] = (0,), engine: str = DEFAULT_ENGINE, Cs: Sequence[float] = DEFAULT_CS,
                      alphas: Sequence[float] = DEFAULT_ALPHAS, inner_cv: int = 3, max_iter: int = MAX_ITER,
                      name: str = "target", groups: np.ndarray | None = None, types: np.ndarray | None = None,
                      probe: str = "linear", mdl: bool = False, tol: float = TOL) -> list[dict[str, Any]]:
    """Probe several feature matrices against one target in one batched pass.

    Args:
        xs: P arrays (n, D_p) (memory-mapped arrays are fine; each is read once per fold).
        y: (n,) encoded target (see ``encode_target``).
        kind: ``categorical`` (logistic regression) or ``continuous`` (ridge, R²).
        cv: outer folds; seeds: one outer split (and control task) per seed.
        engine: ``torch`` (batched) or ``sklearn`` (reference) for the linear probe.
        Cs / alphas: regularization grids searched by the inner CV.
        inner_cv: inner folds.
        max_iter: solver iterations per problem (logistic regression).
        tol: gradient tolerance of the logistic solver, both engines (``TOL``).
        name: target name for error messages.
        groups: (n,) group of each sample (identity, subject): outer and inner folds are group-disjoint.
            None: stratified folds.
        types: (n,) control types (see ``control_labels``); None: the permutation control.
        probe: ``linear`` or ``mlp``.
        mdl: also the online code length (categorical targets; averaged over seeds).

    Returns:
        P result dicts with ``metric``, ``ci95``, ``control_accuracy``, ``selectivity``, ``chance``,
        ``n_train``, ``n_test``, ``dim``, ``kind``, ``reg`` (median chosen C or alpha), ``probe``,
        ``n_seeds``, ``mdl_bits``, ``uniform_bits``, ``compression`` (None without ``mdl``).
    """
    classify, regress = _solvers(probe, engine)
    check_target(y, kind=kind, cv=cv, name=name)
    if groups is not None:
        check_groups(groups, cv)
    xs, where = _dedupe(xs)  # e.g. cataftermlp's patch readout, identical at every layer: probe it once
    solve, grid = (classify, Cs) if kind == "categorical" else (regress, alphas)
    n_classes = int(y.max()) + 1 if kind == "categorical" else 0
    P = len(xs)
    scores: list[list[dict[str, float]]] = [[] for _ in range(P)]
    controls: list[list[float]] = [[] for _ in range(P)]
    regs: list[list[float]] = [[] for _ in range(P)]
    sizes = []
    for seed in seeds:
        c = control_labels(y, seed, types)
        for fold, (tr, te) in enumerate(_outer_splits(y, cv, seed, kind, groups)):
            pairs = [_standardize(np.asarray(x[tr]), np.asarray(x[te])) for x in xs]
            inner = _inner_splits(y[tr], inner_cv, seed * 1000 + fold, kind, None if groups is None else groups[tr])
            prob = ProbeProblem([p[0] for p in pairs], [p[1] for p in pairs], y[tr], c[tr], n_classes, inner)
            pred, cpred, chosen = solve(prob, grid, seed, max_iter, tol)
            sizes.append((len(tr), len(te)))
            for p in range(P):
                scores[p].append(_fold_scores(y[te], pred[p], kind))
                key = "r2" if kind == "continuous" else "accuracy"
                controls[p].append(_fold_scores(c[te], cpred[p], kind)[key])
                regs[p].append(float(chosen[p]))
    n_train, n_test = (int(round(v)) for v in np.mean(sizes, 0))
    results = []
    for p in range(P):
        names = list(scores[p][0])
        metric = {m: float(np.mean([s[m] for s in scores[p]])) for m in names}
        ci = {m: list(t_interval([s[m] for s in scores[p]])) for m in names}
        main = "r2" if kind == "continuous" else "accuracy"
        control = float(np.mean(controls[p]))
        reg = float(np.median(regs[p]))
        code = {"mdl_bits": None, "uniform_bits": None, "compression": None}
        if mdl and kind == "categorical":
            bits = [online_codelength(np.asarray(xs[p]), y, n_classes=n_classes, seed=s, probe=probe, C=reg)
                    for s in seeds]
            code = {"mdl_bits": float(np.mean([b[0] for b in bits])), "uniform_bits": bits[0][1]}
            code["compression"] = code["uniform_bits"] / code["mdl_bits"]
        results.append({"metric": metric, "ci95": ci, "control_accuracy": control,
                        "selectivity": metric[main] - control, "chance": chance_level(y, kind),
                        "n_train": n_train, "n_test": n_test, "dim": int(xs[p].shape[1]), "kind": kind,
                        "reg": reg, "probe": probe, "n_seeds": len(list(seeds)), **code})
    return [dict(results[k]) for k in where]


def fit_probe(*, features: np.ndarray, labels: Sequence[Any], cv: int = 5, seed: int = 0, seeds: int = 1,
              kind: str = "categorical", engine: str = DEFAULT_ENGINE, Cs: Sequence[float] = DEFAULT_CS,
              alphas: Sequence[float] = DEFAULT_ALPHAS, inner_cv: int = 3, max_iter: int = MAX_ITER,
              groups: Sequence[Any] | None = None, types: Sequence[Any] | None = None, probe: str = "linear",
              mdl: bool = False, tol: float = TOL) -> dict[str, Any]:
    """Fit one linear probe with outer CV and report metrics with 95% CIs, chance and selectivity.

    Args:
        features: (n, D) features (standardized per fold inside).
        labels: (n,) class labels of any hashable type, or floats when ``kind="continuous"``.
        cv: outer folds.
        seed: first seed; ``seeds`` consecutive seeds are used (seed, seed+1, ...).
        kind: ``categorical`` or ``continuous``.
        engine: ``torch`` or ``sklearn``.
        Cs / alphas: regularization grids for the inner CV.
        groups: (n,) groups (identity, subject) for group-disjoint outer and inner folds; None: stratified.
        types: (n,) control types (Hewitt & Liang); None: the permutation control.
        probe: ``linear`` or ``mlp``; mdl: also the online code length.

    Returns:
        dict with ``metric``, ``ci95``, ``control_accuracy``, ``selectivity``, ``chance``, ``n_train``,
        ``n_test``, ``dim``, ``kind``, ``reg``, ``probe``, ``n_seeds``, ``mdl_bits``, ``compression``.
    """
    X = np.asarray(features)
    if X.ndim != 2 or len(X) != len(labels):
        raise FerlensError(f"features must be (n, D) with one row per label; got {X.shape} for {len(labels)} labels.")
    y = encode_target(labels, kind)
    return evaluate_features([X], y, kind=kind, cv=cv, seeds=range(seed, seed + seeds), engine=engine, Cs=Cs,
                             alphas=alphas, inner_cv=inner_cv, max_iter=max_iter, tol=tol,
                             groups=None if groups is None else np.asarray(groups),
                             types=None if types is None else np.asarray(types), probe=probe, mdl=mdl)[0]


# ----------------------------------------------------------------------------- sweeps over a FeatureSet

def resolve_targets(featureset: "FeatureSet", targets: Sequence[str] | str) -> list[str]:
    """``"all"`` → expression + every attr; otherwise validate the names (FerlensError lists valid ones)."""
    valid = featureset.target_names()
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if list(targets) == ["all"]:
        return valid
    for t in targets:
        if t not in valid:
            raise FerlensError(f"Unknown target '{t}'; valid targets are {', '.join(valid)} (or 'all')."
                               + close_matches(t, valid))
    return list(targets)


def resolve_group(featureset: "FeatureSet", group: str | None = "auto") -> str | None:
    """``auto`` → the first of ``GROUP_ATTRS`` the dataset has (None when it has none); ``none`` → None;
    else the named attribute (FerlensError when it does not exist)."""
    if group in (None, "none"):
        return None
    if group == "auto":
        return next((g for g in GROUP_ATTRS if g in featureset.attrs), None)
    valid = [a for a in featureset.attrs]
    if group not in valid:
        raise FerlensError(f"Unknown --group '{group}'; this dataset has {', '.join(valid) or 'no attributes'} "
                           "(or use 'auto' / 'none')." + close_matches(group, valid))
    return group


def _too_few_groups(featureset: "FeatureSet", name: str, cv: int) -> bool:
    return len(np.unique(np.asarray(featureset.attrs[name]).astype(str))) < cv


def _plan(featureset: "FeatureSet", target: str, group_name: str | None):
    grouped_by = group_name if group_name not in (None, target) else None
    scheme = "grouped" if grouped_by else ("within-group" if group_name == target else "stratified")
    return (np.asarray(featureset.attrs[grouped_by]) if grouped_by else None), grouped_by, scheme


def fold_plan(featureset: "FeatureSet", target: str, group: str | None = "auto",
              cv: int = 5) -> tuple[np.ndarray | None, str | None, str]:
    """How ``target`` is cross-validated on ``featureset``: (groups (n,) or None, grouping attribute or None,
    scheme ``grouped`` | ``within-group`` | ``stratified``), by the rules of ``sweep``."""
    name = resolve_group(featureset, group)
    if group == "auto" and name is not None and _too_few_groups(featureset, name, cv):
        name = None
    return _plan(featureset, target, name)


@dataclass
class ControlTypes:
    """Lazily computed control types of one FeatureSet (k-means of the stem features computed once)."""

    featureset: "FeatureSet"
    _kmeans: np.ndarray | None = None

    def kmeans(self) -> np.ndarray:
        if self._kmeans is None:
            fs = self.featureset
            base = fs.stem if fs.stem is not None else fs.readout("patch" if "patch" in fs.arrays else "cls", fs.layers[0])
            self._kmeans = kmeans_types(np.asarray(base))
        return self._kmeans

    def resolve(self, control: str, target: str, grouped_by: str | None) -> tuple[np.ndarray | None, str]:
        """(types or None, control_kind) for one target.

        ``auto``: the dataset's identity/subject when those types recur on both sides of the folds (the
        folds are not grouped by them and the target is not that attribute itself), else k-means clusters
        of the stem features (identity-grouped folds never show a test identity in training, so an identity
        control would be the random-guess rate again).
        """
        if control not in CONTROL_KINDS:
            raise FerlensError(f"Unknown --control '{control}'; use one of {', '.join(CONTROL_KINDS)}."
                               + close_matches(control, CONTROL_KINDS))
        attrs = self.featureset.attrs
        if control == "permutation":
            return None, "permutation"
        if control in GROUP_ATTRS:
            if control not in attrs:
                raise FerlensError(f"--control {control} needs a '{control}' attribute, which this dataset lacks; "
                                   "use --control kmeans.")
            return np.asarray(attrs[control]), f"type:{control}"
        if control == "auto":
            attr = next((g for g in GROUP_ATTRS if g in attrs), None)
            if attr is not None and attr != grouped_by and attr != target:
                return np.asarray(attrs[attr]), f"type:{attr}"
        types = self.kmeans()
        return types, f"type:kmeans-stem(k={int(types.max()) + 1})"


def sweep(*, featureset: "FeatureSet", targets: Sequence[str] | str = ("expression",),
          readouts: Sequence[str] | str = ("cls", "patch"), layers: Sequence[str | int] | str = "all",
          cv: int = 5, seeds: int = 3, engine: str = DEFAULT_ENGINE, Cs: Sequence[float] = DEFAULT_CS,
          alphas: Sequence[float] = DEFAULT_ALPHAS, inner_cv: int = 3, max_iter: int = MAX_ITER,
          run: str | None = None, on_skip: Callable[[str], None] | None = None,
          progress: bool = True, group: str | None = "auto", control: str = "auto", probe: str = "linear",
          mdl: bool = False, tol: float = TOL) -> list[dict[str, Any]]:
    """Probe every (target, layer, readout) of a FeatureSet; all readouts × layers of a target in one batch.

    Args:
        featureset: cached features (``probe.features.load_features`` / ``extract``).
        targets: names or ``"all"`` (expression + every attr of the dataset).
        readouts: ``cls``, ``patch``, ``patch_max``, ``stem``, ``patch@r,c``.
        layers: ``"all"`` or indices into ``featureset.layers`` (python style, -1 = last) or hook names.
        cv, seeds: outer folds and number of seeds.
        engine: ``torch`` (batched) or ``sklearn``.
        run: value of the ``run`` column.
        on_skip: called with a one-line note when a target from ``"all"`` cannot be probed (it is
            skipped); when None or the target was named explicitly the error is raised.
        group: attribute the folds are grouped by (``auto``: identity/subject when present; ``none``).
            The grouping attribute itself is probed with a within-group (stratified) split.
        control: control task (``CONTROL_KINDS``; see ``ControlTypes.resolve``).
        probe: ``linear`` or ``mlp``; mdl: also the online code length per probe.

    Returns:
        Rows per docs/contracts.md (``random_init_accuracy`` is None; ``probe linear`` fills it), with
        ``cv_groups``, ``cv_scheme`` (grouped | within-group | stratified) and ``control_kind``.
    """
    from tqdm.auto import tqdm

    from_all = targets == "all" or list(targets) == ["all"]
    names = resolve_targets(featureset, targets)
    pairs = featureset.pairs(readouts, layers)  # [(readout, layer, layer_index)]
    group_name = resolve_group(featureset, group)
    if group == "auto" and group_name is not None and _too_few_groups(featureset, group_name, cv):
        if on_skip is not None:  # too few identities to group by: say so and fall back to stratified folds
            on_skip(f"fewer distinct '{group_name}' values than {cv} folds; folds are not grouped")
        group_name = None
    control_types = ControlTypes(featureset)
    rows: list[dict[str, Any]] = []
    for target in tqdm(names, desc="probe targets", disable=not progress):
        values, kind = featureset.target(target)
        y = encode_target(values, kind)
        groups, grouped_by, scheme = _plan(featureset, target, group_name)
        try:
            check_target(y, kind=kind, cv=cv, name=target)
            if groups is not None:
                check_groups(groups, cv, grouped_by)
        except FerlensError as e:
            if from_all and on_skip is not None:
                on_skip(f"skipping target '{target}': {e}")
                continue
            raise
        types, control_kind = control_types.resolve(control, target, grouped_by)
        xs = [featureset.readout(r, layer) for r, layer, _ in pairs]
        results = evaluate_features(xs, y, kind=kind, cv=cv, seeds=range(seeds), engine=engine, Cs=Cs,
                                    alphas=alphas, inner_cv=inner_cv, max_iter=max_iter, tol=tol, name=target,
                                    groups=groups, types=types, probe=probe, mdl=mdl)
        for (readout, layer, index), res in zip(pairs, results):
            rows.append({"run": run, "target": target, "layer": layer, "layer_index": index, "tokens": readout,
                         **res, "cv_groups": grouped_by, "cv_scheme": scheme, "control_kind": control_kind,
                         "random_init_accuracy": None})
    return rows


def add_baseline(rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill ``random_init_accuracy`` from rows of the same sweep on a random-init model (accuracy or R²)."""
    key = {(r["target"], r["layer"], r["tokens"], r.get("probe", "linear")): r for r in baseline_rows}
    out = []
    for r in rows:
        b = key.get((r["target"], r["layer"], r["tokens"], r.get("probe", "linear")))
        main = "r2" if r["kind"] == "continuous" else "accuracy"
        out.append({**r, "random_init_accuracy": None if b is None else b["metric"][main]})
    return out


CSV_COLUMNS = ["run", "target", "kind", "layer", "layer_index", "tokens", "accuracy", "accuracy_lo", "accuracy_hi",
               "balanced_accuracy", "balanced_accuracy_lo", "balanced_accuracy_hi", "macro_f1", "macro_f1_lo",
               "macro_f1_hi", "r2", "r2_lo", "r2_hi", "control_accuracy", "selectivity", "chance",
               "random_init_accuracy", "n_train", "n_test", "dim", "reg", "probe", "cv_groups", "cv_scheme",
               "control_kind", "n_seeds", "mdl_bits", "uniform_bits", "compression"]


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``linear.json`` after a sweep: the new rows replace every old row of the same probe family
    (``linear`` / ``mlp``); rows of the other families are kept, so ``--probe mlp`` adds to the linear rows."""
    families = {r.get("probe", "linear") for r in new}
    return [r for r in old if r.get("probe", "linear") not in families] + list(new)


def flatten_row(row: dict[str, Any]) -> dict[str, Any]:
    """A JSON row → a CSV row with ``metric.*`` and ``ci95.*`` flattened (``accuracy``, ``accuracy_lo`` ...)."""
    flat = {k: v for k, v in row.items() if k not in ("metric", "ci95")}
    for m, v in row["metric"].items():
        flat[m] = v
        flat[f"{m}_lo"], flat[f"{m}_hi"] = row["ci95"][m]
    return flat
