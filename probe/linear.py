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
one problem at a time) and ``torch`` (all layers × readouts × inner folds × C values of a target
stacked into one batched multinomial logistic regression solved by full-batch L-BFGS; ridge is
solved in closed form through one eigendecomposition per problem). The batched solver is
hand-written because no library fits many independent logistic regressions in one batched call.
``bench/bench_probe_sweep.py`` measures the agreement and the speed-up.
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
# chosen by bench/bench_probe_sweep.py: the batched torch engine (one L-BFGS per problem, run in lockstep,
# warm-started along the C path) agrees with sklearn within 0.2 points and is 1.9-2.4x faster on the
# bench's synthetic sweep, but on the demo's real features (10 matrices of 640x160) it is 0.65-1.4x per
# target (1.07x over four targets): problems that sklearn finishes in a few iterations still ride along
# in the batch until the slowest of them converges. The sklearn reference stays the default until torch
# wins clearly.
DEFAULT_ENGINE = "sklearn"
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
    """Z-score both with the training statistics (zero-variance columns get scale 1, like sklearn)."""
    train = np.asarray(train, dtype=np.float32)
    mean = train.mean(0)
    std = train.std(0)
    std[std < 1e-12] = 1.0
    return (train - mean) / std, (np.asarray(test, dtype=np.float32) - mean) / std


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


def _sklearn_classify(prob: ProbeProblem, Cs: Sequence[float], seed: int, max_iter: int):
    """Reference engine: LogisticRegressionCV per feature matrix, then the control at the chosen C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    preds, cpreds, chosen = [], [], []
    with warnings.catch_warnings():  # max_iter is sklearn's default; the torch engine stops there silently too
        warnings.simplefilter("ignore", ConvergenceWarning)
        for xtr, xte in zip(prob.x_train, prob.x_test):
            clf = LogisticRegressionCV(Cs=list(Cs), cv=prob.inner, l1_ratios=(0.0,), scoring="accuracy",
                                       max_iter=max_iter, use_legacy_attributes=False).fit(xtr, prob.y_train)
            preds.append(clf.predict(xte))
            cpreds.append(_fit_predict(lambda: LogisticRegression(C=float(clf.C_), max_iter=max_iter),
                                       xtr, prob.c_train, xte))
            chosen.append(float(clf.C_))
    return np.stack(preds), np.stack(cpreds), np.asarray(chosen)


def _sklearn_regress(prob: ProbeProblem, alphas: Sequence[float], seed: int, max_iter: int):
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

    def solve(prob: ProbeProblem, grid: Sequence[float], seed: int, max_iter: int):
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


def batched_logreg(X, Y, weights, lam, n_classes: int, max_iter: int = 100, tol: float = 1e-4, init=None,
                   history: int = 10):
    """Fit P × R independent L2-regularized multinomial logistic regressions at once.

    Each problem gets its own L-BFGS (two-loop recursion, ``history`` pairs, Armijo backtracking) but all
    problems advance together: one iteration is two batched matmuls over the loss and gradient of every
    feature matrix (row p) that still has an active problem, written out in closed form (softmax −
    one-hot); rows whose R problems have all converged leave the batch. A problem stops when its largest
    gradient entry is ≤ ``tol`` — sklearn's ``lbfgs`` stopping rule (``gtol``) on the same objective —
    or after ``max_iter`` iterations. Hand-written: neither torch nor scipy solves many independent
    problems with separate line searches in one call (one L-BFGS over the concatenated problems, the
    previous design, makes every problem wait for the worst-conditioned one's curvature).

    Minimizes, for every feature matrix p and label set r,
    ``sum_i w[r,i] CE(x_pi W_pr + b_pr, y_ri) / sum_i w[r,i] + lam[p,r]/2 ||W_pr||²``; with
    ``lam = 1 / (C n_train)`` this is sklearn's objective divided by ``C n_train``.

    Args:
        X: (P, n, D) float tensor of standardized features.
        Y: (R, n) int64 labels, one row per label set.
        weights: (R, n) float sample weights (0 drops a sample from label set r).
        lam: (P, R) float penalties.
        n_classes: K.
        max_iter: L-BFGS iterations per problem.
        tol: gradient tolerance (max-abs) per problem.
        init: optional warm start (W (P, D, R, K), b (P, R, K)).

    Returns:
        W (P, D, R, K) and b (P, R, K).
    """
    import torch

    P, n, D = X.shape
    R, K, D1 = Y.shape[0], n_classes, D + 1
    Xb = torch.cat([X, torch.ones(P, n, 1, dtype=X.dtype)], 2)  # (P, n, D+1): the bias is the last row of W
    XbT = Xb.transpose(1, 2).contiguous()  # (P, D+1, n)
    w = (weights / weights.sum(1, keepdim=True)).T.to(X.dtype).contiguous()  # (n, R)
    onehot = torch.nn.functional.one_hot(Y.T, K).to(X.dtype)  # (n, R, K)
    lam4 = lam.to(X.dtype)[:, None, :, None]  # (P, 1, R, 1)
    W = torch.zeros(P, D1, R, K, dtype=X.dtype)
    if init is not None:
        W[:, :D] = init[0]
        W[:, D] = init[1]

    def loss_grad(W):  # W (P, D+1, R, K) -> loss (P, R), grad (P, D+1, R, K)
        P = W.shape[0]
        Z = torch.bmm(Xb, W.reshape(P, D1, R * K)).view(P, n, R, K)
        lse = torch.logsumexp(Z, -1, keepdim=True)  # (P, n, R, 1)
        ce = ((lse.squeeze(-1) - (Z * onehot).sum(-1)) * w).sum(1)  # (P, R)
        G = (torch.exp(Z - lse) - onehot) * w[..., None]  # (P, n, R, K)
        g = torch.bmm(XbT, G.view(P, n, R * K)).view(P, D1, R, K)
        g[:, :D] += lam4 * W[:, :D]
        return ce + 0.5 * lam4[:, 0, :, 0] * W[:, :D].pow(2).sum((1, 3)), g

    def flat(t):  # (P, D+1, R, K) -> (P, R, (D+1) K)
        return t.permute(0, 2, 1, 3).reshape(len(t), R, D1 * K)

    def unflat(t):
        return t.view(len(t), R, D1, K).permute(0, 2, 1, 3)

    f, g = loss_grad(W)
    x, gf = flat(W), flat(g)
    S, Yh, rho = [], [], []  # L-BFGS history, newest last: (P, R, d), (P, R, d), (P, R)
    gamma = 1.0 / gf.norm(dim=-1).clamp_min(1.0)  # initial Hessian scale; the first move has unit length
    step = torch.ones(P, R, dtype=X.dtype)
    iters = torch.zeros(P, R, dtype=torch.long)
    active = gf.abs().amax(-1) > tol  # (P, R)
    out = x.clone()  # (P0, R, d): rows are written here when they leave the batch
    rows = torch.arange(P)
    # One batched evaluation per pass: a problem whose trial point fails the Armijo test stays put and
    # retries with half the step on the next pass, so no problem waits for another's line search.
    for _ in range(2 * max_iter + 20):
        keep = active.any(1)
        if not bool(keep.all()):  # drop finished rows from the batch
            out[rows[~keep]] = x[~keep]
            rows, Xb, XbT, lam4, x, gf, f, active, gamma, step, iters = (
                t[keep] for t in (rows, Xb, XbT, lam4, x, gf, f, active, gamma, step, iters))
            S, Yh, rho = [t[keep] for t in S], [t[keep] for t in Yh], [t[keep] for t in rho]
        if len(rows) == 0:
            break
        q = gf.clone()  # two-loop recursion, per problem
        alphas = []
        for s_i, y_i, r_i in zip(reversed(S), reversed(Yh), reversed(rho)):
            a = r_i * (s_i * q).sum(-1)
            q -= a[..., None] * y_i
            alphas.append(a)
        q *= gamma[..., None]
        for s_i, y_i, r_i, a in zip(S, Yh, rho, reversed(alphas)):
            q += s_i * (a - r_i * (y_i * q).sum(-1))[..., None]
        d = -q
        slope = (gf * d).sum(-1)  # (P, R)
        bad = slope >= 0  # not a descent direction: fall back to steepest descent for that problem
        if bool(bad.any()):
            d = torch.where(bad[..., None], -gf * gamma[..., None], d)
            slope = torch.where(bad, -(gf * gf).sum(-1) * gamma, slope)
        x_try = x + (step * active)[..., None] * d
        f_try, g_try = loss_grad(unflat(x_try))
        ok = active & (f_try <= f + 1e-4 * step * slope)
        gf_try = flat(g_try)
        s_k, y_k = (x_try - x) * ok[..., None], (gf_try - gf) * ok[..., None]
        sy = (s_k * y_k).sum(-1)
        curved = ok & (sy > 1e-10)
        r_k = torch.where(curved, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        gamma = torch.where(curved, sy / (y_k * y_k).sum(-1).clamp_min(1e-30), gamma)
        S.append(s_k), Yh.append(y_k), rho.append(r_k)
        if len(S) > history:
            S.pop(0), Yh.pop(0), rho.pop(0)
        x = torch.where(ok[..., None], x_try, x)
        gf = torch.where(ok[..., None], gf_try, gf)
        f = torch.where(ok, f_try, f)
        iters += ok
        step = torch.where(ok, torch.ones_like(step), step * 0.5)
        active = active & (gf.abs().amax(-1) > tol) & (iters < max_iter) & (step > 1e-6)
    if len(rows):
        out[rows] = x
    W = out.view(len(out), R, D1, K).permute(0, 2, 1, 3)
    return W[:, :D].contiguous(), W[:, D].contiguous()


def _logreg_predict(X, W, b):
    """Class predictions (P, n, R) for X (P, n, D), W (P, D, R, K), b (P, R, K)."""
    import torch

    P, D, R, K = W.shape
    logits = torch.baddbmm(b.reshape(P, 1, R * K), X, W.reshape(P, D, R * K)).view(P, -1, R, K)
    return logits.argmax(-1)


def _torch_classify(prob: ProbeProblem, Cs: Sequence[float], seed: int, max_iter: int):
    """Batched engine: all feature matrices × inner folds at once (rows = matrices, label sets = folds),
    one ``batched_logreg`` call per C along the path from the strongest penalty, each warm-started from
    the previous C's solutions (as sklearn's ``LogisticRegressionCV`` does; on the bench's synthetic sweep
    1.4 s instead of 4.8 s for solving every C from zero in one wide call), then one call for (real,
    control) labels at each matrix's chosen C, warm-started from its inner-fold solutions."""
    import torch

    K = prob.n_classes
    Xtr = _stack(prob.x_train)  # (P, n, D)
    Xte = _stack(prob.x_test)
    P, n, D = Xtr.shape
    y = torch.from_numpy(prob.y_train.astype(np.int64))
    F = len(prob.inner)
    weights = torch.zeros(F, n)  # label set f = inner fold f, weights select its training samples
    for f, (tr, _) in enumerate(prob.inner):
        weights[f, torch.from_numpy(tr)] = 1.0
    val = 1.0 - weights  # (F, n)
    grid = torch.tensor(sorted(float(c) for c in Cs))  # strongest penalty first: ties keep the simpler probe
    Y = y.expand(F, n).contiguous()
    state, scores, solutions = None, [], []
    for c in grid:
        lam = (1.0 / (c * weights.sum(1)))[None].expand(P, F).contiguous()  # (P, F)
        state = batched_logreg(Xtr, Y, weights, lam, K, max_iter, init=state)  # W (P, D, F, K), b (P, F, K)
        correct = (_logreg_predict(Xtr, *state) == y[None, :, None]).float()  # (P, n, F)
        scores.append(((correct * val.T[None]).sum(1) / val.sum(1)).mean(-1))  # (P,)
        solutions.append((state[0].mean(2), state[1].mean(1)))  # fold-averaged (P, D, K), (P, K)
    best = torch.stack(scores, 1).argmax(1)  # (P,) first max = strongest penalty among ties
    W0 = torch.stack([solutions[int(k)][0][p] for p, k in enumerate(best)])  # (P, D, K)
    b0 = torch.stack([solutions[int(k)][1][p] for p, k in enumerate(best)])  # (P, K)
    init = (torch.stack([W0, W0], 2), torch.stack([b0, b0], 1))
    Y2 = torch.stack([y, torch.from_numpy(prob.c_train.astype(np.int64))])  # (2, n): real, control
    lam2 = (1.0 / (grid[best] * n))[:, None].expand(P, 2).contiguous()
    W, b = batched_logreg(Xtr, Y2, torch.ones(2, n), lam2, K, max_iter, init=init)
    out = _logreg_predict(Xte, W, b)  # (P, n_test, 2)
    return out[..., 0].numpy(), out[..., 1].numpy(), grid[best].numpy().astype(np.float64)


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


def _torch_regress(prob: ProbeProblem, alphas: Sequence[float], seed: int, max_iter: int):
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


# engine name -> (classify, regress); each takes (ProbeProblem, grid, seed, max_iter) and returns
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
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, r2_score

    if kind == "continuous":
        return {"r2": float(r2_score(y_true, y_pred))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


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
                      alphas: Sequence[float] = DEFAULT_ALPHAS, inner_cv: int = 3, max_iter: int = 100,
                      name: str = "target", groups: np.ndarray | None = None, types: np.ndarray | None = None,
                      probe: str = "linear", mdl: bool = False) -> list[dict[str, Any]]:
    """Probe several feature matrices against one target in one batched pass.

    Args:
        xs: P arrays (n, D_p) (memory-mapped arrays are fine; each is read once per fold).
        y: (n,) encoded target (see ``encode_target``).
        kind: ``categorical`` (logistic regression) or ``continuous`` (ridge, R²).
        cv: outer folds; seeds: one outer split (and control task) per seed.
        engine: ``torch`` (batched) or ``sklearn`` (reference) for the linear probe.
        Cs / alphas: regularization grids searched by the inner CV.
        inner_cv: inner folds.
        max_iter: solver iterations.
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
            pred, cpred, chosen = solve(prob, grid, seed, max_iter)
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
              alphas: Sequence[float] = DEFAULT_ALPHAS, inner_cv: int = 3, max_iter: int = 100,
              groups: Sequence[Any] | None = None, types: Sequence[Any] | None = None, probe: str = "linear",
              mdl: bool = False) -> dict[str, Any]:
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
                             alphas=alphas, inner_cv=inner_cv, max_iter=max_iter,
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
          alphas: Sequence[float] = DEFAULT_ALPHAS, inner_cv: int = 3, max_iter: int = 100,
          run: str | None = None, on_skip: Callable[[str], None] | None = None,
          progress: bool = True, group: str | None = "auto", control: str = "auto", probe: str = "linear",
          mdl: bool = False) -> list[dict[str, Any]]:
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
                                    alphas=alphas, inner_cv=inner_cv, max_iter=max_iter, name=target,
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
