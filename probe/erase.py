"""Concept erasure: does a readout still encode a target once a concept is linearly removed from it?

LEACE (Belrose et al. 2023, the ``concept-erasure`` package) gives the least-squares affine edit of the
features after which no linear classifier beats a constant one at predicting the concept. Protocol:

* the eraser is fitted on the *train* split's readout (the concept one-hot coded), and applied to the
  *test* split's readout of the same layer;
* on the test features, before and after erasure, probes for the concept and for expression are fitted
  with the folds of ``probe linear`` (grouped by identity/subject; a within-identity split for the
  identity target itself — with identity-disjoint splits the test identities are not the train ones, so
  erasing "identity" removes the directions that separated the *train* identities);
* the control removes as many random directions (the rank of the LEACE edit; orthogonal projection
  around the train mean, one random draw per seed): a concept is erased *specifically* when its probe
  drops to chance while the random control leaves it;
* causal version: the erased CLS token is written back into the residual stream at that layer
  (activation patching through the model's hook points) and the rest of the model runs on; the model's
  test accuracy is compared with the clean run and with the random-direction control.

``ci95`` of ``before``/``after`` is the Student-t interval over folds × seeds; of ``random_control_after``
over the seeds' random draws (draw s is probed on the folds of CV seed s, its accuracy averaged over them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from train.errors import FerlensError

from .linear import DEFAULT_ENGINE, encode_target, evaluate_features, fold_plan, t_interval


# ----------------------------------------------------------------------------- erasers

@dataclass
class Eraser:
    """An affine edit x -> x - (x - bias) @ right.T @ left.T of (n, D) features, with its rank."""

    left: np.ndarray    # (D, k)
    right: np.ndarray   # (k, D)
    bias: np.ndarray    # (D,)
    rank: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x - ((x - self.bias) @ self.right.T) @ self.left.T).astype(np.float32)

    def torch(self):
        """The same edit as a torch function (B, D) -> (B, D)."""
        import torch

        left, right, bias = (torch.from_numpy(a).float() for a in (self.left, self.right, self.bias))
        return lambda x: x - ((x - bias.to(x)) @ right.T.to(x)) @ left.T.to(x)


def fit_leace(x: np.ndarray, concept: np.ndarray) -> Eraser:
    """LEACE eraser of a categorical ``concept`` (n,) int codes from features ``x`` (n, D)."""
    import torch
    from concept_erasure import LeaceEraser

    codes = np.unique(concept, return_inverse=True)[1].ravel()
    if codes.max() < 1:
        raise FerlensError("The concept has a single class in the fit split, so there is nothing to erase; "
                           "pick a concept with at least two values.")
    X = torch.from_numpy(np.asarray(x, dtype=np.float64))
    Z = torch.nn.functional.one_hot(torch.from_numpy(codes), int(codes.max()) + 1).double()
    e = LeaceEraser.fit(X, Z)
    left, right = e.proj_left.numpy(), e.proj_right.numpy()
    rank = int(np.linalg.matrix_rank(left @ right, tol=1e-6))
    bias = e.bias.numpy() if e.bias is not None else np.zeros(X.shape[1])
    return Eraser(left, right, bias, rank)


def random_eraser(x: np.ndarray, rank: int, seed: int) -> Eraser:
    """Orthogonal projection removing ``rank`` random directions (uniform on the sphere) around the mean of x."""
    d = x.shape[1]
    q, _ = np.linalg.qr(np.random.default_rng(30_011 + seed).normal(size=(d, max(rank, 1))))
    q = q[:, :rank]
    return Eraser(q, q.T, np.asarray(x, dtype=np.float64).mean(0), rank)


# ----------------------------------------------------------------------------- probing before/after

def erase_sweep(*, fit_set, eval_set, concept: str, targets: Sequence[str] | None = None,
                readouts: Sequence[str] = ("cls", "patch"), layers: str | Sequence = "all", cv: int = 5,
                seeds: int = 3, group: str | None = "auto", engine: str = DEFAULT_ENGINE,
                progress: bool = True) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Eraser]]:
    """Probe ``targets`` on ``eval_set`` before and after erasing ``concept`` (LEACE fitted on ``fit_set``).

    Args:
        fit_set / eval_set: FeatureSets of the train and test splits of one run.
        concept: ``expression`` or an attribute name (categorical).
        targets: probed targets (default: the concept and expression).
        readouts, layers: as in ``probe linear``.
        cv, seeds: outer folds and seeds (one random-direction draw per seed).
        group: fold grouping (``auto``: identity/subject).

    Returns:
        (rows ``{layer, layer_index, tokens, concept, target, before, after, random_control_after, ci95,
        chance, rank, n_seeds, cv_groups, cv_scheme}``, erasers by (readout, layer)).
    """
    from tqdm.auto import tqdm

    _, kind = fit_set.target(concept)
    if kind != "categorical":
        raise FerlensError(f"Concept '{concept}' is continuous; LEACE erases categorical concepts "
                           "(use a binned attribute such as yaw_bin).")
    targets = list(dict.fromkeys(targets or [concept, "expression"]))
    z = encode_target(fit_set.target(concept)[0], "categorical")
    pairs = eval_set.pairs(readouts, layers)
    erasers: dict[tuple[str, str], Eraser] = {}
    mats: list[list[np.ndarray]] = []  # per pair: [before, after, random_0 .. random_{S-1}]
    for readout, layer, _ in tqdm(pairs, desc="fit erasers", disable=not progress):
        xtr = np.asarray(fit_set.readout(readout, layer))
        e = fit_leace(xtr, z)
        erasers[(readout, layer)] = e
        xte = np.asarray(eval_set.readout(readout, layer), dtype=np.float32)
        mats.append([xte, e(xte)] + [random_eraser(xtr, e.rank, s)(xte) for s in range(seeds)])
    rows = []
    for target in tqdm(targets, desc="erasure probes", disable=not progress):
        values, tkind = eval_set.target(target)
        y = encode_target(values, tkind)
        groups, grouped_by, scheme = fold_plan(eval_set, target, group, cv)
        opts = dict(kind=tkind, cv=cv, engine=engine, name=target, groups=groups)
        # before/after over every seed's folds; random draw s only on seed s's folds (paired, a third of the cost)
        both = evaluate_features([m for ms in mats for m in ms[:2]], y, seeds=range(seeds), **opts)
        rand = [evaluate_features([ms[2 + s] for ms in mats], y, seeds=[s], **opts) for s in range(seeds)]
        main = "r2" if tkind == "continuous" else "accuracy"
        for k, (readout, layer, index) in enumerate(pairs):
            before, after = both[2 * k], both[2 * k + 1]
            rvals = [rand[s][k]["metric"][main] for s in range(seeds)]
            rows.append({"layer": layer, "layer_index": index, "tokens": readout, "concept": concept,
                         "target": target, "metric": main, "before": before["metric"][main],
                         "after": after["metric"][main], "random_control_after": float(np.mean(rvals)),
                         "ci95": {"before": before["ci95"][main], "after": after["ci95"][main],
                                  "random_control_after": list(t_interval(rvals))},
                         "chance": before["chance"], "rank": erasers[(readout, layer)].rank,
                         "dim": before["dim"], "n_seeds": seeds, "cv_groups": grouped_by, "cv_scheme": scheme,
                         "n_fit": int(fit_set.n), "n_eval": int(eval_set.n)})
    return rows, erasers


# ----------------------------------------------------------------------------- causal erasure

def _bootstrap(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (n_boot, len(correct)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _cls_edit(spec, layer: str, fn: Callable) -> Callable:
    """Output edit of hook ``layer``: the CLS token (where the model spec says it lives) goes through ``fn``."""
    index = spec.layout(layer).cls_index

    def edit(out):  # (B, T, D)
        out = out.clone()
        out[:, index] = fn(out[:, index])
        return out

    return edit


def causal_erasure(model, images, labels, erasers: dict[str, Eraser], *, fit_cls: dict[str, np.ndarray],
                   seeds: int = 3, batch_size: int = 64, concept: str = "") -> list[dict[str, Any]]:
    """Model accuracy when the CLS token at a layer is replaced by its erased version (and by the
    random-direction control of the same rank), the rest of the forward unchanged.

    Args:
        model: a run's model in eval mode.
        images: (n, 3, H, W) preprocessed test images; labels: (n,) expression classes.
        erasers: {layer: LEACE eraser of the CLS readout at that layer}.
        fit_cls: {layer: (n_fit, D) train CLS features} (the random control's centre).
        seeds: random-direction draws.

    Returns:
        rows ``{layer, concept, baseline_accuracy, accuracy, delta_accuracy, random_control_accuracy,
        ci95: {accuracy, random_control_accuracy}, rank, n}``.
    """
    import torch

    from train.models.adapters import model_spec

    from .intervene import patched

    spec = model_spec(model)
    labels_np = np.asarray(labels)

    @torch.no_grad()
    def correct(layer: str | None, fn: Callable | None) -> np.ndarray:
        preds = []
        for chunk in images.split(batch_size):
            if layer is None:
                preds.append(model(chunk).argmax(-1))
            else:
                with patched(model, layer, _cls_edit(spec, layer, fn)):
                    preds.append(model(chunk).argmax(-1))
        return (torch.cat(preds).cpu().numpy() == labels_np).astype(np.float64)

    model.eval()
    clean = correct(None, None)
    rows = []
    for layer, e in erasers.items():
        if layer not in spec.cls_layers:
            raise FerlensError(f"Layer '{layer}' holds no CLS token; use one of {', '.join(spec.cls_layers)}.")
        erased = correct(layer, e.torch())
        rand = [correct(layer, random_eraser(fit_cls[layer], e.rank, s).torch()).mean() for s in range(seeds)]
        rows.append({"layer": layer, "concept": concept, "baseline_accuracy": float(clean.mean()),
                     "accuracy": float(erased.mean()), "delta_accuracy": float(erased.mean() - clean.mean()),
                     "random_control_accuracy": float(np.mean(rand)),
                     "ci95": {"accuracy": _bootstrap(erased), "baseline_accuracy": _bootstrap(clean),
                              "random_control_accuracy": list(t_interval(rand))},
                     "rank": e.rank, "n": int(len(labels_np)), "n_seeds": seeds})
    return rows


def merge_erasure(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``erasure.json`` after one ``probe erase``: rows of the same concept are replaced, others kept."""
    old = old or {}
    concept = new["concept"]
    keep = lambda rows: [r for r in rows if r.get("concept") != concept]  # noqa: E731
    return {**{k: v for k, v in old.items() if k not in ("rows", "causal", "concepts")}, **{
        k: v for k, v in new.items() if k not in ("rows", "causal", "concept")},
        "concepts": sorted({*old.get("concepts", []), concept}),
        "rows": keep(old.get("rows", [])) + new["rows"], "causal": keep(old.get("causal", [])) + new["causal"]}
