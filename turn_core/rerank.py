"""The learning queue: re-rank the unreviewed images from a run's saved arrays and the reviewer's
decisions, as plain functions over arrays (no backbone, no training of the network).

Each decision tells the true class of one image. ``learned_suspicion`` turns the decisions so far
into a new suspicion for every unreviewed image:

* **trusted labels**: the reviewed images' labels are replaced by the reviewer's and weigh
  ``TRUSTED_WEIGHT`` times as much as a given label;
* **neighbour vote** on those labels, over the neighbour graph the run's k-NN vote used (computed
  once by ``prepare``): errors found near an image make its own label suspect, errors fixed
  among its neighbours stop counting against it;
* **refitted linear probe** on the corrected labels (cross-fitted over the unreviewed images, so
  no image is scored by a probe that saw its own given label) on a PCA of the trusted views;
* the run's own out-of-fold probe and final model stay in the ensemble unchanged;
* **class pairs**: a given → suggested pair whose reviewed images turned out wrong more often
  than their suspicion predicted moves up, one the reviewer keeps rejecting moves down
  (``pair_calibration``, shrunk towards no change while a pair has few decisions).

``REFRESH_EVERY`` and ``TOP_N`` are this module's settings (how often the page and the simulator
re-rank; how much of a very large queue is re-ranked). The Review page and
``bench/review_sim.py`` call the same functions, so the benchmark measures what users get.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .scores import knn_label_probs, normalise_rows, select_views

REFRESH_EVERY = 10        # decisions between two re-rankings (dev runs, mean D90 vs static: 10 → −9.9 %,
                          # 25 → −8.4 %, 50 → −8.2 %; a re-ranking of 1,000 images takes ~50 ms)
WARMUP = 100              # decisions before the first re-ranking: fewer moved the order more by chance
                          # than by what they taught (bench/review_sim.py, random1: −6 errors at 100)
TOP_N = 50_000            # at very large N only the first TOP_N unreviewed images are re-ranked
TRUSTED_WEIGHT = 5.0      # a reviewed label counts this many given labels (vote and probe)
PCA_DIMS = 64             # the refitted probe works on this many principal components per view
PCA_SAMPLE = 20_000       # rows the PCA's SVD is fitted on (all of them at or below)
STACK_L2 = 1.0            # the stacked learner's L2 penalty on its signal weights (dev runs: 0.1 / 1 / 10)
PAIR_PRIOR = 20.0         # decisions a pair needs before its own hit rate counts as much as the score
HEDGE = True              # blend the learned order with the static one by how each ranked the latest decisions
HEDGE_WINDOW = 50         # the latest decisions the hedge holds out to compare the orders on (dev runs,
                          # mean D90 vs static, hedging stack+rebuild: 50 → −9.0 %, 100 → −6.7 %, 200 → −6.2 %)
HEDGE_MIN = 25            # held-out decisions the hedge needs before it moves off the static order
HEDGE_BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)  # learned share of the blends it compares
HEDGE_MARGIN = 0.05       # AUROC a blend must gain over static on the held-out decisions to be trusted (dev
                          # runs at 4,000 images: 0 and 0.02 fell 1.2 % of a budget behind static, 0.05 held)
HIT_WINDOW = 50           # the running hit rate is the share of the last HIT_WINDOW decisions that fixed a label
LEFT_POWER = 3.0          # errors_left weighs an image's suspicion to this power (dev runs, BENCHMARKS §3)
UNKNOWN = -1              # trusted label of an excluded image: reviewed, but no class


@dataclass(frozen=True)
class RerankBase:
    """What a re-ranking needs from a run, computed once (``prepare``). N samples, K classes.

    labels (N,) int given labels; static (N,) the run's suspicion; neighbours: one (N, k) int
    neighbour graph per trusted view; reduced: one (N, PCA_DIMS) float32 PCA of each trusted
    view; cv_probs (N, K) the run's out-of-fold probe (mean over trusted views); final_probs
    (N, K) the final model's probabilities, or None when it is not in the run's ensemble.
    """

    labels: np.ndarray
    static: np.ndarray
    neighbours: list
    reduced: list
    cv_probs: np.ndarray
    final_probs: np.ndarray | None
    ensemble: np.ndarray | None = None   # (N, K) the run's ensemble_probs.npy (None: rebuilt)
    votes0: list | None = None           # per view: the neighbour vote on the given labels (N, K)
    probes0: list | None = None          # per view: the cross-fitted probe on the given labels (N, K)

    @property
    def n_classes(self) -> int:
        return self.cv_probs.shape[1]


def pca(features: np.ndarray, dims: int = PCA_DIMS, seed: int = 0, block: int = 65_536) -> np.ndarray:
    """(N, D) → (N, min(dims, D, N)) float32: the rows (unit-normalised, centred) projected on
    their top principal directions (SVD of at most ``PCA_SAMPLE`` rows, so large N stays fast).

    Above ``PCA_SAMPLE`` rows ``features`` (a float16 memmap is fine) is read ``block`` rows at a
    time and centred by the sample's mean: the only (N, ·) array made is the (N, dims) result
    (at 1M × 1280 the float32 copies of the whole-array path were 15 GB and 80 s per view)."""
    n = len(features)
    rng = np.random.default_rng(seed)
    if n <= PCA_SAMPLE:
        f = normalise_rows(features)
        f = f - f.mean(axis=0, keepdims=True)
        dims = max(1, min(dims, *f.shape))
        _, _, vt = np.linalg.svd(f, full_matrices=False)
        return (f @ vt[:dims].T).astype(np.float32)
    import torch

    from .images import release_pages
    from .knn import as_tensor, unit_rows

    # Centred by the sample's mean, so one pass over the rows does it all: (u − m) · B = u · B − m · B.
    sample = unit_rows(features[np.sort(rng.choice(n, PCA_SAMPLE, replace=False))])
    mean = sample.mean(axis=0)
    dims = max(1, min(dims, PCA_SAMPLE, features.shape[1]))
    centred = (sample - mean).astype(np.float64)
    _, vecs = np.linalg.eigh(centred.T @ centred)   # the SVD's right vectors, 10× faster at 20k × 1280
    basis = torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1][:, :dims], dtype=np.float32))
    shift = torch.from_numpy(mean.astype(np.float32)) @ basis
    out = np.empty((n, dims), dtype=np.float32)
    for s in range(0, n, block):
        rows = as_tensor(features[s:s + block]).float()   # torch: 3× faster than numpy's float16 cast
        rows /= torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-12)
        out[s:s + block] = (rows @ basis - shift).numpy()
        if (s // block) % 8 == 7:
            release_pages(features)   # the mapped pages read count in RSS: hand them back
    release_pages(features)
    return out


def prepare(labels: np.ndarray, features: list[np.ndarray], cv_probs: list[np.ndarray],
            probs: np.ndarray, static: np.ndarray, knn_k: int = 10, ensemble: np.ndarray | None = None,
            neighbours: list | None = None) -> RerankBase:
    """The run's arrays → a ``RerankBase``: the trusted views as the run chose them
    (``scores.select_views``), their neighbour graphs and PCAs.

    labels (N,) int; features: (N, D) per view (pretrained first); cv_probs: (N, K) per view;
    probs (N, K) final model; static (N,) the run's suspicion in [0, 1]; ensemble (N, K) the
    run's ensemble probabilities when saved (the learned ensemble starts from them).
    neighbours: per view, the run's saved (N, k) neighbour graph (``rundir.Run.neighbours``) or
    None; a view without one is searched here (``scores.knn_label_probs``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(cv_probs) == 0 or len(features) < len(cv_probs):
        raise InputError("the run has no out-of-fold probabilities or features to re-rank from")
    keep = select_views(list(cv_probs), labels)
    k = cv_probs[0].shape[1]
    saved = list(neighbours or [])
    nbrs = [knn_label_probs(features[i], labels, k, knn_k, neighbours=saved[i] if i < len(saved) else None)[1]
            for i in keep]
    reduced = [pca(features[i]) for i in keep]
    none = np.zeros(len(labels), dtype=bool)
    return RerankBase(labels=labels, static=np.asarray(static, dtype=np.float64), neighbours=nbrs,
                      reduced=reduced, cv_probs=np.mean([cv_probs[i] for i in keep], axis=0),
                      final_probs=np.asarray(probs, dtype=np.float64) if any(i > 0 for i in keep) else None,
                      ensemble=None if ensemble is None else np.asarray(ensemble, dtype=np.float64),
                      votes0=[trusted_vote(nb, labels, none, k) for nb in nbrs],
                      probes0=[refit_probe(x, labels, none, k) for x in reduced])


def base_from_run(run) -> RerankBase:
    """``prepare`` on a run directory (``rundir.Run``): samples.csv, features_*.npy,
    cv_probs.npy, probs.npy, and the saved neighbours (``Run.neighbours``; a view without them
    is searched). Raises ``InputError`` naming the file that is missing."""
    s = run.samples(columns=["given_label", "suspicion"])
    if s is None or len(s) == 0:
        raise InputError(f"{run.dir / 'samples.csv'}: no samples to re-rank")
    idx = {c: i for i, c in enumerate(run.classes)}
    labels = s["given_label"].map(idx).to_numpy()
    views = [w for w in ("pre", "post") if run.features(w) is not None]
    feats = [run.features(w) for w in views]   # float16 memmaps: ``pca`` reads them in blocks
    graphs = [run.neighbours(w) for w in views]
    for name, ok in (("features_pre.npy", bool(feats)), ("cv_probs.npy", (run.dir / "cv_probs.npy").exists()),
                     ("probs.npy", (run.dir / "probs.npy").exists())):
        if not ok:
            raise InputError(f"{run.dir / name}: missing, so the queue cannot learn from decisions")
    cv = list(np.load(run.dir / "cv_probs.npy"))
    ens = run.dir / "ensemble_probs.npy"
    return prepare(labels, feats[:len(cv)], cv[:len(feats)], np.load(run.dir / "probs.npy"),
                   s["suspicion"].to_numpy(float), knn_k=run.settings.get("knn_k", 10),
                   ensemble=np.load(ens) if ens.exists() else None,
                   neighbours=[None if g is None else np.asarray(g[0], dtype=np.int64) for g in graphs])


# ------------------------------------------------------------------------ ensemble members


def trusted_vote(neighbours: np.ndarray, labels: np.ndarray, trusted: np.ndarray, n_classes: int,
                 weight: float = TRUSTED_WEIGHT) -> np.ndarray:
    """Neighbour vote (N, K) over a fixed graph with corrected labels.

    neighbours (N, k) int; labels (N,) int, the reviewer's label where ``trusted`` (N,) bool,
    UNKNOWN for an excluded image (it does not vote); a trusted neighbour weighs ``weight``.
    Rows are shares summing to 1 (uniform when no neighbour votes).
    """
    lab = labels[neighbours]
    w = np.where(trusted[neighbours], weight, 1.0) * (lab != UNKNOWN)
    out = np.zeros((len(neighbours), n_classes))
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    np.add.at(out, (rows, np.where(lab == UNKNOWN, 0, lab).ravel()), w.ravel())
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.maximum(total, 1e-12), 1.0 / n_classes)


def refit_probe(x: np.ndarray, labels: np.ndarray, trusted: np.ndarray, n_classes: int,
                folds: int = 2, weight: float = TRUSTED_WEIGHT, ridge: float = 1.0, seed: int = 0,
                cross_fit_trusted: bool = False) -> np.ndarray:
    """Class probabilities (N, K) of a linear probe on ``x`` (N, d) fitted to the corrected
    ``labels`` (N,), trusted rows weighing ``weight``, excluded (UNKNOWN) rows left out.

    The probe is weighted ridge regression onto one-hot labels (closed form, milliseconds at
    d = 64, so a re-ranking never waits on an iterative solver), its outputs clipped at 0 and
    normalised. Cross-fitted: the untrusted rows are split into ``folds``; each fold is scored
    by a probe fitted on the trusted rows and the other folds, so no image's score saw its own
    given label. Trusted rows get the mean of the fold probes, or with ``cross_fit_trusted`` are
    split into the folds too, so that no row's score saw its own (reviewed) label either: what a
    model learning from the reviewed rows' scores needs, or their scores would leak the answer.
    """
    n = len(labels)
    xb = np.hstack([np.asarray(x, dtype=np.float64), np.ones((n, 1))])
    usable = labels != UNKNOWN
    onehot = np.zeros((n, n_classes))
    onehot[np.flatnonzero(usable), labels[usable]] = 1.0
    w = np.where(trusted, weight, 1.0) * usable
    fold = np.random.default_rng(seed).integers(0, folds, n)
    if not cross_fit_trusted:
        fold[trusted] = -1
    shared = fold == -1  # rows every fold probe scores (their mean)
    out = np.zeros((n, n_classes))
    for f in range(folds):
        wf = w * (fold != f)
        a = (xb * wf[:, None]).T @ xb + ridge * np.eye(xb.shape[1])
        coef = np.linalg.solve(a, (xb * wf[:, None]).T @ onehot)
        score = (fold == f) | shared
        out[score] += (xb[score] @ coef) / np.where(shared[score], folds, 1)[:, None]
    out = np.clip(out, 0.0, None) + 1e-3
    return out / out.sum(axis=1, keepdims=True)


def pair_calibration(suspicion: np.ndarray, labels: np.ndarray, suggested: np.ndarray,
                     reviewed: np.ndarray, was_error: np.ndarray, prior: float = PAIR_PRIOR) -> np.ndarray:
    """Suspicion (N,) moved by how each given → suggested class pair fared in review.

    For a pair, the reviewed images' hit rate h (errors found / decisions) is shrunk towards
    their mean suspicion s̄ with ``prior`` pseudo-decisions, and every image of that pair has its
    odds multiplied by h/(1−h) ÷ s̄/(1−s̄). labels, suggested (N,) int; reviewed (N,) bool;
    was_error (N,) bool (meaningful where reviewed).
    """
    eps = 1e-4
    s = np.clip(np.asarray(suspicion, dtype=np.float64), eps, 1 - eps)
    k = int(max(labels.max(initial=0), suggested.max(initial=0))) + 1
    pair = labels * k + suggested
    r = reviewed.astype(bool)
    n = np.bincount(pair[r], minlength=k * k).astype(float)
    hits = np.bincount(pair[r], weights=was_error[r].astype(float), minlength=k * k)
    mean_s = np.bincount(pair[r], weights=s[r], minlength=k * k) / np.maximum(n, 1)
    h = np.clip((hits + prior * mean_s) / (n + prior), eps, 1 - eps)
    shift = np.where(n > 0, np.log(h / (1 - h)) - np.log(np.clip(mean_s, eps, 1 - eps) / (1 - np.clip(mean_s, eps, 1 - eps))), 0.0)
    z = np.log(s / (1 - s)) + shift[pair]
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------------ re-ranking


def corrected_labels(base: RerankBase, reviewed: np.ndarray, true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), trusted (N,) bool): the given labels with the reviewer's at ``reviewed``
    (int indices; ``true_labels`` the same length, UNKNOWN for an excluded image)."""
    reviewed = np.asarray(reviewed, dtype=np.int64)
    labels = base.labels.copy()
    labels[reviewed] = np.asarray(true_labels, dtype=np.int64)
    trusted = np.zeros(len(labels), dtype=bool)
    trusted[reviewed] = True
    return labels, trusted


def rebuilt_probs(base: RerankBase, labels: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """The ensemble (N, K) rebuilt with corrected labels: per trusted view the trusted neighbour
    vote and the refitted probe, plus the run's out-of-fold probe and final model unchanged."""
    k = base.n_classes
    members = [base.cv_probs]
    for nb, x in zip(base.neighbours, base.reduced):
        members.append(trusted_vote(nb, labels, trusted, k))
        members.append(refit_probe(x, labels, trusted, k))
    if base.final_probs is not None:
        members.append(base.final_probs)
    return np.mean(members, axis=0)


def learned_probs(base: RerankBase, labels: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """The run's ensemble (N, K) moved by what the decisions taught: per trusted view, the
    change of the neighbour vote and of the cross-fitted probe when the given labels are
    replaced by the reviewer's (trusted ones weighing more), each weighing what one member of
    the run's ensemble weighs. Starting from the run's ensemble rather than rebuilding it keeps
    its strongest members (the probe on the full features, the final model) and makes no
    decision at all give back the run's own order."""
    k = base.n_classes
    n_views = len(base.neighbours)
    members = 2 * n_views + (base.final_probs is not None)
    start = base.ensemble
    if start is None:
        parts = [(base.cv_probs, n_views)] + [(v, 1) for v in base.votes0]
        if base.final_probs is not None:
            parts.append((base.final_probs, 1))
        start = sum(p * w for p, w in parts) / members
    delta = np.zeros_like(start)
    for nb, x, v0, p0 in zip(base.neighbours, base.reduced, base.votes0, base.probes0):
        delta += trusted_vote(nb, labels, trusted, k) - v0
        delta += refit_probe(x, labels, trusted, k) - p0
    return np.clip(start + delta / members, 0.0, 1.0)


def suspicion_from_probs(base: RerankBase, p: np.ndarray, labels: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """Suspicion (N,) from learned class probabilities p (N, K): 1 − p(given label), then moved
    by how each given → suggested pair fared in review (``pair_calibration``)."""
    n = len(labels)
    given = base.labels
    score = 1.0 - p[np.arange(n), given]
    other = p.copy()
    other[np.arange(n), given] = -np.inf
    was_error = trusted & (labels != given)  # exclude (UNKNOWN) counts as an error found: the image left
    return pair_calibration(score, given, other.argmax(axis=1), trusted, was_error)


def rank01(values: np.ndarray) -> np.ndarray:
    """(N,) → (N,) ranks scaled into (0, 1), ties by index: scores of different scales (a
    suspicion, a probe's disagreement) become comparable without trusting their calibration."""
    r = np.empty(len(values))
    r[np.argsort(np.asarray(values), kind="stable")] = np.arange(len(values))
    return (r + 0.5) / max(len(values), 1)


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = STACK_L2, iters: int = 25) -> np.ndarray:
    """Weights (d + 1,) of an L2-penalised logistic regression of y (M,) in {0, 1} on x (M, d),
    intercept last and unpenalised, by Newton steps (d is a handful: milliseconds)."""
    xb = np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])
    pen = l2 * np.eye(xb.shape[1])
    pen[-1, -1] = 0.0
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        q = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        hess = (xb * (q * (1 - q))[:, None]).T @ xb + pen + 1e-6 * np.eye(len(w))
        w -= np.linalg.solve(hess, xb.T @ (q - y) + pen @ w)
    return w


def stack_signals(base: RerankBase, labels: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """(N, S) rank-scaled signals the stacked learner weighs: the run's suspicion; per trusted
    view the disagreement of a probe refitted on the corrected labels (cross-fitted over every
    row, so a reviewed row's signal never saw its own answer); the run ensemble's low
    confidence; the run's out-of-fold probe's and final model's disagreement."""
    n = len(labels)
    ar, given = np.arange(n), base.labels
    ens = base.ensemble if base.ensemble is not None else base.cv_probs
    cols = [rank01(base.static)]
    cols += [rank01(1 - refit_probe(x, labels, trusted, base.n_classes, cross_fit_trusted=True)[ar, given])
             for x in base.reduced]
    cols += [rank01(-ens.max(axis=1)), rank01(1 - base.cv_probs[ar, given])]
    if base.final_probs is not None:
        cols.append(rank01(1 - base.final_probs[ar, given]))
    return np.column_stack(cols)


def stacked_suspicion(base: RerankBase, labels: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """Suspicion (N,) from a logistic regression, fitted on the reviewed images (was the label
    changed?), over ``stack_signals``: the decisions teach which of the run's signals and
    refitted probes tell errors apart on this data set."""
    x = stack_signals(base, labels, trusted)
    w = logistic_fit(x[trusted], (labels != base.labels)[trusted].astype(float))
    return 1.0 / (1.0 + np.exp(-np.clip(x @ w[:-1] + w[-1], -30, 30)))


# How the decisions become a suspicion, by name (bench/review_sim.py --learner compares them):
# each takes (base, corrected labels (N,), trusted (N,) bool) and returns a suspicion (N,).
LEARNERS = {
    "delta": lambda b, lab, tr: suspicion_from_probs(b, learned_probs(b, lab, tr), lab, tr),
    "rebuild": lambda b, lab, tr: suspicion_from_probs(b, rebuilt_probs(b, lab, tr), lab, tr),
    "stack": stacked_suspicion,
}
# With HEDGE, the hedge picks between the two learners each re-ranking: the best mean D90 on the
# dev runs among the variants never more than 1 % of a budget behind static (BENCHMARKS.md §3).
LEARNER = "stack+rebuild"


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` (M,) for ``positive`` (M,) bool (ties count half);
    None when one of the two classes is empty."""
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(np.asarray(score, dtype=np.float64), kind="stable")
    sorted_s = np.asarray(score, dtype=np.float64)[order]
    ranks = np.empty(len(pos))
    # average ranks over ties
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    ranks[order] = np.repeat(start + (counts + 1) / 2.0, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def hedge_choice(base: RerankBase, reviewed: np.ndarray, true_labels: np.ndarray, learners: tuple | None = None,
                 window: int = HEDGE_WINDOW) -> tuple[str, float]:
    """Which learner, and how much (0…1, from ``HEDGE_BLENDS``) of its order, to trust, read
    from the reviewer's own answers, never from a truth file.

    The latest ``window`` decisions (at most half of them all) are held out: each learner is
    fitted on the decisions before them, and each blend of its suspicion with the static one
    (by rank) is scored by its AUROC on the held-out images (was the label changed?). The
    blend that ranked them best wins; ties go to the static side, then to the first learner.
    ``learners``: names in ``LEARNERS`` (default: those in ``LEARNER``, joined by "+"). reviewed
    (M,) int indices, oldest decision first; true_labels (M,) int. (first learner, 0)
    while there is no evidence: fewer than 2 × ``HEDGE_MIN`` decisions, or a held-out window
    without both outcomes."""
    reviewed = np.asarray(reviewed, dtype=np.int64)
    true_labels = np.asarray(true_labels, dtype=np.int64)
    learners = tuple(learners or LEARNER.split("+"))
    w = min(window, len(reviewed) // 2)
    if w < HEDGE_MIN:
        return learners[0], 0.0
    held, past = reviewed[-w:], slice(0, len(reviewed) - w)
    changed = true_labels[-w:] != base.labels[held]
    labels, trusted = corrected_labels(base, reviewed[past], true_labels[past])
    static = rank01(base.static)[held]
    if auroc(static, changed) is None:
        return learners[0], 0.0
    # a blend must beat the static order's AUROC by HEDGE_MARGIN to be trusted at all
    best, best_auc = (learners[0], 0.0), auroc(static, changed) + HEDGE_MARGIN
    for name in learners:
        before = rank01(LEARNERS[name](base, labels, trusted))[held]
        for a in HEDGE_BLENDS[1:]:
            auc = auroc(a * before + (1 - a) * static, changed)
            if auc > best_auc + 1e-9:
                best, best_auc = (name, a), auc
    return best


def hedge_weight(base: RerankBase, reviewed: np.ndarray, true_labels: np.ndarray, learner: str = "stack",
                 window: int = HEDGE_WINDOW) -> float:
    """``hedge_choice`` for one learner: the share of its order to trust."""
    return hedge_choice(base, reviewed, true_labels, (learner,), window)[1]


def learned_suspicion(base: RerankBase, reviewed: np.ndarray, true_labels: np.ndarray,
                      learner: str = LEARNER, hedge: bool = HEDGE) -> np.ndarray:
    """New suspicion (N,) in [0, 1] of every image after the decisions so far.

    reviewed (M,) int indices, oldest decision first; true_labels (M,) int, the class each one
    really has (UNKNOWN: excluded). Reviewed images keep their static suspicion (they leave the
    queue anyway). Before ``WARMUP`` decisions the result is the static suspicion: the learning
    queue starts as the run's. With ``hedge`` the learned suspicion is blended (by rank) with
    the static one as far as the latest decisions say it ranks better (``hedge_weight``), so a
    learner that does not help on a data set leaves the static order nearly as it was.
    ``learner`` may name several learners joined by "+" (hedged only): the hedge then picks the
    one whose blend ranked the latest decisions best (``hedge_choice``).
    """
    reviewed = np.asarray(reviewed, dtype=np.int64)
    names = learner.split("+")
    for name in names:
        if name not in LEARNERS:
            raise InputError(f"learner {name!r} is not one of {', '.join(LEARNERS)}")
    if len(names) > 1 and not hedge:
        raise InputError(f"learner {learner!r}: several learners need the hedge to choose between them")
    if len(reviewed) < WARMUP:
        return base.static.copy()
    labels, trusted = corrected_labels(base, reviewed, true_labels)
    if not hedge:
        return np.where(trusted, base.static, LEARNERS[learner](base, labels, trusted))
    name, a = hedge_choice(base, reviewed, true_labels, names)
    if a == 0.0:
        return np.where(trusted, base.static, base.static)
    # the blend is of ranks in (0, 1): a suspicion's scale says nothing across learners
    score = a * rank01(LEARNERS[name](base, labels, trusted)) + (1 - a) * rank01(base.static)
    return np.where(trusted, base.static, score)


def learned_order(base: RerankBase, reviewed: np.ndarray, true_labels: np.ndarray,
                  order: np.ndarray | None = None, top_n: int = TOP_N, learner: str = LEARNER,
                  hedge: bool = HEDGE) -> np.ndarray:
    """The unreviewed images (int indices) in learned order, most suspect first.

    ``order``: the current queue order of all images (default: static suspicion); only its first
    ``top_n`` unreviewed images are re-ranked, the rest keep their places after them (at very
    large N that keeps a re-ranking in seconds)."""
    if order is None:
        order = static_order(base.static)
    done = np.zeros(len(base.labels), dtype=bool)
    done[np.asarray(reviewed, dtype=np.int64)] = True
    rest = np.asarray(order, dtype=np.int64)[~done[order]]
    head, tail = rest[:top_n], rest[top_n:]
    s = learned_suspicion(base, reviewed, true_labels, learner, hedge)
    head = head[np.argsort(-s[head], kind="stable")]
    return np.concatenate([head, tail])


def static_order(suspicion: np.ndarray) -> np.ndarray:
    """All indices by suspicion, highest first, ties by index (the static queue)."""
    s = np.asarray(suspicion, dtype=np.float64)
    return np.lexsort((np.arange(len(s)), -s))


# ---------------------------------------------------------------------- for the reviewer


def hit_rate(changed: list[bool], window: int = HIT_WINDOW) -> float | None:
    """Share of the last ``window`` decisions (oldest first in ``changed``) that changed a
    label; None before the first decision."""
    last = list(changed)[-window:]
    return None if not last else float(np.mean(last))


def errors_left(suspicion: np.ndarray, unreviewed: np.ndarray, reviewed_suspicion: np.ndarray,
                reviewed_changed: np.ndarray, count: float | None = None, power: float = LEFT_POWER) -> float:
    """Estimated label errors among the ``unreviewed`` images (int indices).

    suspicion (N,): the run's own suspicion (a probability-like score, never the learning
    queue's rank blend); reviewed_suspicion (M,) and reviewed_changed (M,) bool: the reviewed
    images' suspicion and whether review changed their label; count: the run's estimate of
    the wrong labels in the whole data set (``error_count``), or None.

    A capture estimate: the errors found so far, times how much of the error mass the score
    puts on the unreviewed images against the reviewed ones, with the mass of an image taken
    as suspicion ** ``power`` (a raised score puts less mass on the many low-suspicion images,
    which hold few errors). It is capped by ``count`` minus the errors found, when a count is
    given. Before any error is found, the count is shared out by the same mass, and without a
    count the suspicion summed is returned. ``power`` = 1 without ``count`` is the estimate of
    sessions 3-10 (3-5x too many; BENCHMARKS.md §3).
    """
    s = np.clip(np.asarray(suspicion, dtype=np.float64), 0.0, 1.0)
    unreviewed = np.asarray(unreviewed, dtype=np.int64)
    found = float(np.sum(reviewed_changed))
    rev = np.clip(np.asarray(reviewed_suspicion, dtype=np.float64), 0.0, 1.0) ** power
    left_mass = float(np.sum(s[unreviewed] ** power))
    if found > 0 and rev.sum() > 0:
        estimate = found * left_mass / float(rev.sum())
    elif count is not None:
        estimate = count * left_mass / max(left_mass + float(rev.sum()), 1e-12)
    else:
        return float(np.sum(s[unreviewed]))
    return estimate if count is None else float(min(estimate, max(count - found, 0.0)))


def error_count(labels: np.ndarray, probs: np.ndarray) -> float:
    """Confident learning's estimate of the wrong labels in a data set: labels (N,) int given
    labels, probs (N, K) out-of-sample class probabilities (the run's ensemble). The count
    ``errors_left`` is capped by; the flag rules' ``cl`` count (``scores.confident_count``)."""
    from .scores import confident_count

    return confident_count(np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64))


__all__ = [
    "HIT_WINDOW",
    "LEARNER",
    "LEARNERS",
    "REFRESH_EVERY",
    "TOP_N",
    "UNKNOWN",
    "WARMUP",
    "RerankBase",
    "auroc",
    "base_from_run",
    "corrected_labels",
    "error_count",
    "errors_left",
    "hedge_choice",
    "hedge_weight",
    "hit_rate",
    "learned_order",
    "learned_probs",
    "learned_suspicion",
    "logistic_fit",
    "pair_calibration",
    "pca",
    "prepare",
    "rank01",
    "rebuilt_probs",
    "refit_probe",
    "stack_signals",
    "stacked_suspicion",
    "static_order",
    "suspicion_from_probs",
    "trusted_vote",
]
