"""Generated token sets (and vectors) with planted near-duplicate groups, for grouping's tests and
scripts/bench_lsh.py.

``planted_sets(n, ...)``: ``n`` documents, each a set of 20-40 tokens drawn uniformly from a
vocabulary (integers, or strings ``"t<k>"``). A share of them belong to planted groups: a base
document and 1-5 variants, each with a few of its tokens replaced, so that its Jaccard similarity to
the base is at least ``min_jaccard``. Returns the ids, the sets (a pyarrow list array) and the
planted group of each row (-1: none). The exact pairs at a threshold (the ground truth) come from
:func:`exact_pairs`, by brute force on a sparse incidence matrix (small data only).

``planted_vectors(n, dim, ...)``: unit vectors, a share in tight groups around random directions
(cosine to the group's centre above ``min_cosine``).

    .venv/bin/python scripts/gen_sets.py --rows 1000000 --out data/bench/sets_1m.parquet
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated index ranges [starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    return np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(total)


def planted_sets(n: int, group_share: float = 0.3, vocab: int = 200_000, min_jaccard: float = 0.8,
                 max_variants: int = 5, seed: int = 0, strings: bool = False):
    """(ids int64, sets list<int64|string>, planted group per row)."""
    rng = np.random.default_rng(seed)
    base_of, group = np.arange(n), np.full(n, -1, np.int64)
    n_planted = int(n * group_share)
    k = rng.integers(1, max_variants + 1, max(1, n_planted // 2))
    k = k[np.cumsum(1 + k) <= n_planted]
    starts = (np.cumsum(1 + k) - (1 + k)).astype(np.int64)
    group[_ranges(starts, 1 + k)] = np.repeat(np.arange(len(k)), 1 + k)
    base_of[_ranges(starts + 1, k)] = np.repeat(starts, k)
    sizes = rng.integers(20, 41, n)[base_of]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tokens = rng.integers(0, vocab, int(offsets[-1]))
    var = np.flatnonzero(base_of != np.arange(n))
    tokens[_ranges(offsets[var], sizes[var])] = tokens[_ranges(offsets[base_of[var]], sizes[var])]
    q_max = np.floor(sizes[var] * (1 - min_jaccard) / (1 + min_jaccard)).astype(np.int64)  # J = (n-q)/(n+q)
    q = (rng.random(len(var)) * (q_max + 1)).astype(np.int64)
    for r, qr in zip(var[q > 0], q[q > 0]):  # the generator's loop over variants (not the library's)
        pos = offsets[r] + rng.choice(sizes[r], qr, replace=False)
        tokens[pos] = rng.integers(vocab, 2 * vocab, qr)  # fresh tokens: the variant loses qr of the base's
    offs = offsets.astype(np.int32 if offsets[-1] < 2**31 else np.int64)
    values = pa.array(tokens, pa.int64())
    if strings:  # "t<k>", vectorised in Arrow
        import pyarrow.compute as pc

        values = pc.binary_join_element_wise(pa.scalar("t"), values.cast(pa.string()), "")
    sets = pa.ListArray.from_arrays(pa.array(offs), values)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # not 0..n-1: ids are not positions
    perm = rng.permutation(n)  # the groups' rows spread over the table
    return ids, sets.take(pa.array(perm)), group[perm]


def exact_pairs(sets: pa.Array, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j, row positions) of distinct sets with Jaccard >= threshold, by brute force."""
    from scipy import sparse

    off = np.asarray(sets.offsets.to_numpy(), np.int64)
    vals = sets.values.to_numpy(zero_copy_only=False)
    _, tok = np.unique(vals, return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), np.diff(off))
    X = sparse.csr_matrix((np.ones(len(tok)), (rows, tok)), shape=(len(sets), tok.max() + 1 if len(tok) else 0))
    X.data[:] = 1.0
    X.sum_duplicates()
    X.data[:] = 1.0
    size = np.asarray(X.sum(axis=1)).ravel()
    inter = sparse.triu(X @ X.T, k=1).tocoo()
    jac = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    keep = jac >= threshold - 1e-12
    return inter.row[keep], inter.col[keep], jac[keep]


def planted_vectors(n: int, dim: int = 32, group_share: float = 0.3, min_cosine: float = 0.95, seed: int = 0):
    """(ids, (n, dim) float32 unit vectors, planted group per row)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    group = np.full(n, -1, np.int64)
    n_planted = int(n * group_share)
    sizes = rng.integers(2, 7, max(1, n_planted // 4))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    keep = starts[1:] <= n_planted
    angle = np.arccos(min_cosine) / 2  # two members within the angle of each other, through the centre
    for g, (s, e) in enumerate(zip(starts[:-1][keep], starts[1:][keep])):
        c = rng.normal(size=dim)
        c /= np.linalg.norm(c)
        noise = rng.normal(size=(e - s, dim))
        noise -= (noise @ c)[:, None] * c
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        t = np.tan(angle * rng.random(e - s))[:, None]
        X[s:e] = c + t * noise
        group[s:e] = g
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    perm = rng.permutation(n)
    return ids, X[perm].astype(np.float32), group[perm]


def write(path: str, rows: int, strings: bool, seed: int) -> None:
    ids, sets, _ = planted_sets(rows, seed=seed, strings=strings)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(pa.table({"doc_id": ids, "tokens": sets}), path + ".tmp", row_group_size=100_000)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strings", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write(a.out, a.rows, a.strings, a.seed)
