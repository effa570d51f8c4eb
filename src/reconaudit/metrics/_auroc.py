"""AUROC engine: Mann-Whitney with ties counted 1/2, for many weight vectors at once."""

from __future__ import annotations

import numpy as np


class SortedScores:
    """Scores sorted once, with their tie groups, ready for repeated weighted AUROC evaluations.

    ``order`` sorts the studies by score (ascending); ``tie_starts`` are the positions in that order
    where a new distinct score begins (``None`` when all scores are distinct).
    """

    def __init__(self, y_true: np.ndarray, y_score: np.ndarray):
        self.order = np.argsort(y_score, kind="stable")
        s = y_score[self.order]
        self.y_sorted = y_true[self.order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.tie_starts = None if len(starts) == len(s) else starts

    def auroc(self, weights_sorted: np.ndarray) -> np.ndarray:
        r"""Weighted AUROC for each row of ``weights_sorted`` (shape (B, n), columns in sorted order).

        With tie groups :math:`k` (ascending score), weighted positives :math:`P_k` and negatives
        :math:`N_k`:

        .. math:: \mathrm{AUROC} = \frac{\sum_k P_k \left(\sum_{l<k} N_l + \tfrac12 N_k\right)}
                                        {\sum_k P_k \sum_k N_k}

        NaN where a row has no weighted positive or no weighted negative.
        """
        w = np.asarray(weights_sorted, dtype=np.float64)
        pos = w * self.y_sorted
        neg = w - pos
        if self.tie_starts is not None:
            pos = np.add.reduceat(pos, self.tie_starts, axis=1)
            neg = np.add.reduceat(neg, self.tie_starts, axis=1)
        below = np.cumsum(neg, axis=1)
        below -= 0.5 * neg
        num = np.einsum("ij,ij->i", pos, below)
        den = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def placement_counts(y_true: np.ndarray, y_score: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Per study: for a positive, #negatives scored lower + 1/2 #negatives tied; for a negative,
    #positives scored higher + 1/2 #positives tied.

    ``key`` (int64, optional) replaces the scores for the comparison; with ``key = block * K + rank``
    comparisons only count studies of the same block (see :func:`within_block_key`).
    """
    pos = y_true == 1
    k = y_score if key is None else key
    kp, kn = np.sort(k[pos]), np.sort(k[~pos])
    out = np.empty(len(k), dtype=np.float64)
    left = np.searchsorted(kn, k[pos], "left")
    right = np.searchsorted(kn, k[pos], "right")
    out[pos] = left + 0.5 * (right - left)
    left = np.searchsorted(kp, k[~pos], "left")
    right = np.searchsorted(kp, k[~pos], "right")
    out[~pos] = (len(kp) - right) + 0.5 * (right - left)
    return out


def within_block_key(y_score: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer keys that order studies by score inside a block and keep blocks apart.

    Returns ``(key, block_floor)`` where comparisons against ``block_floor`` (the smallest key of a
    study's block) bound the counts to that block.
    """
    _, rank = np.unique(y_score, return_inverse=True)
    span = int(rank.max()) + 2 if len(rank) else 1
    base = block.astype(np.int64) * span
    return base + 1 + rank.astype(np.int64), base


def jackknife_auroc(y_true: np.ndarray, y_score: np.ndarray, block: np.ndarray, n_blocks: int) -> np.ndarray:
    r"""Leave-one-block-out AUROC for every block (patient) at once.

    With :math:`U` the Mann-Whitney count, :math:`V_i` the placement counts, and
    :math:`K_b` the count over pairs inside block :math:`b`:

    .. math:: U_{-b} = U - \sum_{i \in b} V_i + K_b, \quad
              \mathrm{AUROC}_{-b} = U_{-b} / (n_1^{(-b)} n_0^{(-b)})
    """
    pos = (y_true == 1).astype(np.float64)
    v = placement_counts(y_true, y_score)
    u = float((v * pos).sum())
    key, floor = within_block_key(y_score, block)
    # placement counts restricted to the study's own block
    pmask = pos == 1
    kn = np.sort(key[~pmask])
    within = np.zeros(len(key))
    kpos, fpos = key[pmask], floor[pmask]
    left, right = np.searchsorted(kn, kpos, "left"), np.searchsorted(kn, kpos, "right")
    within[pmask] = (left - np.searchsorted(kn, fpos, "left")) + 0.5 * (right - left)
    vs = np.bincount(block, weights=v, minlength=n_blocks)
    kb = np.bincount(block, weights=within * pos, minlength=n_blocks)
    n1 = pos.sum() - np.bincount(block, weights=pos, minlength=n_blocks)
    n0 = (1 - pos).sum() - np.bincount(block, weights=1 - pos, minlength=n_blocks)
    num = u - vs + kb
    den = n1 * n0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
