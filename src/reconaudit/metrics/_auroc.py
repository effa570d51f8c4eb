"""AUROC engine: Mann-Whitney with ties counted 1/2, for many weight vectors at once."""

from __future__ import annotations

import numpy as np


class SortedScores:
    """Scores sorted once, ready for repeated weighted AUROC evaluations.

    Studies are sorted by score, and within a tie by class (negatives first).  ``order`` is that
    permutation; ``seg_starts`` are the positions where (score, class) changes: each segment holds
    the negatives or the positives of one distinct score.  Weights sorted by ``order`` reduce to
    per-segment sums with one ``reduceat``, after which everything is on (B, segments) arrays.
    """

    def __init__(self, y_true: np.ndarray, y_score: np.ndarray):
        y = np.asarray(y_true).astype(np.int8)
        self.order = np.lexsort((y, y_score))
        s, ys = y_score[self.order], y[self.order]
        new_score = np.r_[True, s[1:] != s[:-1]]
        new_seg = new_score | np.r_[True, ys[1:] != ys[:-1]]
        self.seg_starts = np.flatnonzero(new_seg)
        self.n = len(y)
        seg_pos = ys[self.seg_starts] == 1
        # a positive segment shares its score with the preceding negative segment
        tied_neg = np.zeros(len(self.seg_starts), dtype=bool)
        tied_neg[1:] = seg_pos[1:] & ~seg_pos[:-1] & ~new_score[self.seg_starts[1:]]
        self.seg_pos = seg_pos.astype(np.float64)
        self.tied_neg = tied_neg
        self.segment_of_study = np.empty(self.n, dtype=np.int64)
        self.segment_of_study[self.order] = np.cumsum(new_seg) - 1

    def segment_matrix(self, block: np.ndarray, n_blocks: int, mask: np.ndarray | None = None):
        """Sparse ``(segments, blocks)`` int32 matrix counting the studies of each block (patient) in
        each segment, so that segment sums for block draw counts ``C`` (B, blocks) are ``(A @ C.T).T``."""
        from scipy import sparse

        keep = np.ones(self.n, dtype=bool) if mask is None else mask
        data = np.ones(int(keep.sum()), dtype=np.int32)
        return sparse.csr_matrix(
            (data, (self.segment_of_study[keep], block[keep])), shape=(len(self.seg_starts), n_blocks)
        )

    def auroc(self, weights_sorted: np.ndarray) -> np.ndarray:
        r"""Weighted AUROC for each row of ``weights_sorted`` (shape (B, n), columns in ``order``).

        With distinct scores :math:`k` (ascending), weighted positives :math:`P_k` and negatives
        :math:`N_k`:

        .. math:: \mathrm{AUROC} = \frac{\sum_k P_k \left(\sum_{l<k} N_l + \tfrac12 N_k\right)}
                                        {\sum_k P_k \sum_k N_k}

        NaN where a row has no weighted positive or no weighted negative.
        """
        w = np.asarray(weights_sorted)
        if w.ndim == 1:
            w = w[None]
        seg = w if len(self.seg_starts) == self.n else np.add.reduceat(w, self.seg_starts, axis=1)
        return self.auroc_from_segments(seg)

    def auroc_from_segments(self, seg: np.ndarray) -> np.ndarray:
        """AUROC from per-segment weight sums ``(B, segments)`` (see :meth:`auroc`)."""
        seg = np.asarray(seg, dtype=np.float64)
        pos = seg * self.seg_pos
        neg = seg - pos
        below = np.cumsum(neg, axis=1)  # negatives with score <= this segment's score
        tie = np.zeros_like(seg)
        tie[:, 1:] = np.where(self.tied_neg[1:], seg[:, :-1], 0.0)  # N_k for a positive segment
        below -= 0.5 * tie
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
