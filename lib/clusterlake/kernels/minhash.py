"""Locality-sensitive hashing of sets (MinHash) and vectors (random hyperplanes), pure numpy.

Near-duplicate grouping compares every row with every other only in principle: each row gets a
short *signature* whose positions collide between two rows with a probability that is a known
function of their similarity, the signature is cut into bands, and only rows sharing a band key
become candidate pairs, which are then verified exactly (:func:`jaccard_pairs`,
:func:`cosine_pairs`).

* **Tokens** (:func:`token_hashes`): every token becomes a stable 64-bit hash, identical across
  processes, machines and runs (no Python ``hash()``). A string hashes its UTF-8 bytes: byte ``c``
  at position ``k`` of the string contributes ``fmix64((k << 8 | c) + salt)`` (a lookup table for
  ``k < 64``), the contributions are summed with wrap-around ``uint64`` arithmetic per string
  (``np.add.reduceat``), and the sum, plus the length times a constant, goes through the murmur3
  finalizer ``fmix64``. Because every (position, byte) term is itself pseudo-random, this has none
  of the structural collisions of a polynomial hash modulo ``2^64`` (Thue-Morse strings). An
  integer hashes as ``fmix64(value ^ salt)`` of its two's-complement 64-bit pattern, so ``int32 5``
  and ``int64 5`` agree and distinct integers never collide (``fmix64`` is a bijection).
* **Sets** (:func:`set_hashes`): the token hashes of each row, de-duplicated and sorted, as a CSR
  pair ``(offsets, hashes)``. Rows are sorted by bucketing them by length class (``2^e``), padding
  each bucket to a matrix and sorting its rows (``np.sort(axis=1)``): about ten times faster than
  a ``lexsort`` by ``(row, hash)`` on 200k rows of 30 tokens.
* **MinHash** (Broder, "On the resemblance and containment of documents", 1997;
  :func:`minhash_signatures`): ``num_perm`` hash functions ``h_i(x) = ((a_i x + b_i) mod 2^64)
  >> 32`` (``a_i`` odd), ``sig[row, i] = min_{x in row} h_i(x)``; for two sets
  ``P[sig_A[i] == sig_B[i]] = J(A, B) = |A n B| / |A u B|`` (up to ties of the 32-bit values).
* **SimHash** (Charikar, "Similarity estimation techniques from rounding algorithms", STOC 2002;
  :func:`hyperplane_signatures`): bit ``i`` of ``x`` is ``[x . r_i >= 0]`` for Gaussian ``r_i``;
  two vectors at angle ``theta`` agree on a bit with probability ``1 - theta / pi``.
* **Banding** (Leskovec, Rajaraman, Ullman, "Mining of Massive Datasets", ch. 3.4;
  :func:`band_keys`, :func:`s_curve`, :func:`lsh_params`): the signature is cut into ``b`` bands
  of ``r`` rows and each band is hashed to one 64-bit key; two rows whose per-hash collision
  probability is ``p`` share at least one band key with probability ``1 - (1 - p^r)^b`` (the
  S-curve). :func:`lsh_params` picks ``(b, r)`` reaching a target recall at the threshold with the
  sharpest curve under a budget of ``b r`` hashes.

Every function is vectorised over rows, sets and elements; Python loops run only over chunks
(bounded temporaries), length classes, bands or the rows of a band.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pyarrow as pa

__all__ = [
    "token_hashes",
    "set_hashes",
    "minhash_signatures",
    "hyperplane_signatures",
    "band_keys",
    "collision_probability",
    "s_curve",
    "lsh_params",
    "jaccard_pairs",
    "cosine_pairs",
]

_U64 = np.uint64
_MAX32 = np.uint32(0xFFFFFFFF)
_MAX64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# murmur3 fmix64 multipliers, the golden-ratio constant, and arbitrary salts separating the domains
_FMIX_M1 = _U64(0xFF51AFD7ED558CCD)
_FMIX_M2 = _U64(0xC4CEB9FE1A85EC53)
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_INT_SALT = _U64(0x2545F4914F6CDD1D)
_BYTE_SALT = _U64(0x8CB92BA72F3D8DD7)
_STR_SALT = _U64(0xD6E8FEB86659FD93)
_BAND_SALT = _U64(0xA0761D6478BD642F)
_S33 = _U64(33)
_S8 = _U64(8)

# Bytes of string data hashed per chunk by token_hashes (its temporaries are ~4 x 8 bytes per byte).
_STR_CHUNK_BYTES = 1 << 21
# Elements per chunk of _sort_segments (one padded uint64 matrix of at most this many entries).
_SORT_CHUNK_ELEMS = 1 << 22
# Bytes of the (num_perm, elements) uint64 block of minhash_signatures.
_MH_CHUNK_BYTES = 32 << 20
# Bytes of the (rows, n_bits) float64 projection block of hyperplane_signatures.
_HP_CHUNK_BYTES = 32 << 20
# Index of the high 32-bit word of a uint64 viewed as two uint32.
_HI_WORD = 1 if sys.byteorder == "little" else 0


def _fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer, in place on the ``uint64`` array ``h`` (returned). A bijection."""
    t = np.empty_like(h)
    for mult in (_FMIX_M1, _FMIX_M2, None):
        np.right_shift(h, _S33, out=t)
        np.bitwise_xor(h, t, out=h)
        if mult is not None:
            np.multiply(h, mult, out=h)
    return h


# term(k << 8 | c) = fmix64((k << 8 | c) + _BYTE_SALT) for the first 64 positions (128 KiB)
_BYTE_TABLE = _fmix64(np.arange(64 * 256, dtype=np.uint64) + _BYTE_SALT)


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For concatenated segments of ``lengths``: each element's segment and its index inside it."""
    lengths = np.asarray(lengths, dtype=np.int64)
    seg = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    local = np.arange(seg.size, dtype=np.int64)
    local -= np.repeat(starts, lengths)
    return seg, local


# --------------------------------------------------------------------------- token hashes


def _hash_byte_segments(data: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Hashes of the byte strings ``data[rel[i]:rel[i + 1]]`` (``rel[0] == 0``, ``rel[-1] == data.size``)."""
    lengths = np.diff(rel)
    sums = np.zeros(lengths.size, dtype=np.uint64)
    if data.size:
        _, local = _segments(lengths)
        key = local.view(np.uint64)
        np.left_shift(key, _S8, out=key)
        np.bitwise_or(key, data, out=key)
        if int(lengths.max()) <= 64:  # every position in the table
            terms = _BYTE_TABLE[key]
        else:
            terms = _fmix64(key + _BYTE_SALT)
        nonempty = lengths > 0
        sums[nonempty] = np.add.reduceat(terms, rel[:-1][nonempty])
    h = lengths.astype(np.uint64)
    np.multiply(h, _GOLDEN, out=h)
    h += sums
    h ^= _STR_SALT
    return _fmix64(h)


def _string_hashes(arr: pa.Array) -> np.ndarray:
    """:func:`token_hashes` of a (large) string or binary array: its Arrow buffers, chunk by chunk."""
    n = len(arr)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, off_buf, data_buf = arr.buffers()[:3]
    offs = np.frombuffer(off_buf, dtype=np.int64 if large else np.int32)[arr.offset:arr.offset + n + 1]
    offs = offs.astype(np.int64)
    data = np.zeros(0, np.uint8) if data_buf is None else np.frombuffer(data_buf, dtype=np.uint8)
    bounds = _chunk_bounds(offs, _STR_CHUNK_BYTES)
    for s, e in zip(bounds[:-1], bounds[1:]):
        out[s:e] = _hash_byte_segments(data[offs[s]:offs[e]], offs[s:e + 1] - offs[s])
    return out


def _int_hashes(values: np.ndarray) -> np.ndarray:
    """:func:`token_hashes` of integers: ``fmix64`` of the two's-complement 64-bit pattern ^ a salt."""
    if values.dtype.kind == "i":
        h = values.astype(np.int64).view(np.uint64)
    else:
        h = values.astype(np.uint64)
    h ^= _INT_SALT
    return _fmix64(h)


def _is_view(t: pa.DataType, kind: str) -> bool:
    """``pa.types.is_string_view`` / ``is_binary_view`` (False on a pyarrow without view types)."""
    test = getattr(pa.types, f"is_{kind}_view", None)
    return bool(test is not None and test(t))


def _arrow_token_hashes(arr: pa.Array) -> np.ndarray:
    """:func:`token_hashes` of one Arrow array (see there for the types)."""
    t = arr.type
    n = len(arr)
    if pa.types.is_integer(t):
        if n == 0:
            return np.zeros(0, np.uint64)
        data = np.frombuffer(arr.buffers()[1], dtype=t.to_pandas_dtype())[arr.offset:arr.offset + n]
        return _int_hashes(data)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _string_hashes(arr)
    if _is_view(t, "string") or _is_view(t, "binary"):
        return _string_hashes(arr.cast(pa.large_string() if _is_view(t, "string") else pa.large_binary()))
    if pa.types.is_dictionary(t):
        dict_h = token_hashes(arr.dictionary)
        if dict_h.size == 0:
            return np.zeros(n, np.uint64)
        # indices under null slots are unspecified: clip them into range
        return np.take(dict_h, _arrow_token_indices(arr.indices), mode="clip")
    raise TypeError(f"token_hashes: tokens must be strings or integers, got {t}")


def _arrow_token_indices(indices: pa.Array) -> np.ndarray:
    """The integer values of a dictionary's index array (unspecified under nulls), without a copy."""
    n = len(indices)
    if n == 0:
        return np.zeros(0, np.int64)
    return np.frombuffer(indices.buffers()[1], dtype=indices.type.to_pandas_dtype())[indices.offset:indices.offset + n]


def token_hashes(values) -> np.ndarray:
    """Stable 64-bit hashes of a flat array of tokens.

    Parameters
    ----------
    values : pyarrow.Array, pyarrow.ChunkedArray or array_like
        Strings (``string``, ``large_string``, ``string_view``; ``binary`` likewise hashes its
        bytes), integers of any width and signedness, or a dictionary array of those. A numpy
        array of integers is hashed directly; one of ``str`` / ``bytes`` / ``object`` goes through
        ``pyarrow.array``.

    Returns
    -------
    hashes : ndarray of shape (len(values),), uint64
        The same for the same token on every process, machine and run. A string hashes its UTF-8
        bytes (``large_string`` equals ``string``; the empty string is a token like any other). An
        integer hashes its value as a 64-bit two's complement, so equal values of different
        integer types agree (a ``uint64`` above ``2^63 - 1`` equals the ``int64`` with the same
        bits); distinct integers never collide. The string ``"5"`` and the integer ``5`` differ.
        The hash under a null slot is unspecified: callers drop nulls (:func:`set_hashes` does).

    Notes
    -----
    See the module docstring for the construction. Complexity: O(number of bytes) for strings
    (chunks of 2 MiB of string data), O(n) for integers.
    """
    if isinstance(values, pa.ChunkedArray):
        parts = [_arrow_token_hashes(c) for c in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if isinstance(values, pa.Array):
        return _arrow_token_hashes(values)
    a = np.asarray(values).ravel()
    if a.dtype.kind in "iu":
        return _int_hashes(a)
    if a.dtype.kind in "USO":
        return _arrow_token_hashes(pa.array(a))
    raise TypeError(f"token_hashes: tokens must be strings or integers, got dtype {a.dtype}")


# --------------------------------------------------------------------------- sets


def _sort_segments(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (uint64, ``offsets[0] == 0``) with each segment ``offsets[i]:offsets[i+1]`` sorted.

    Segments are bucketed by length class ``2^(e-1) < length <= 2^e``; each bucket is padded with
    ``2^64 - 1`` to a ``(segments, 2^e)`` matrix (chunks of at most ``_SORT_CHUNK_ELEMS`` entries)
    whose rows are sorted. The first ``length`` entries of a sorted row are the segment's values
    sorted, even if one of them is ``2^64 - 1`` (the padding is never smaller than a value).
    """
    out = values.copy()
    lengths = np.diff(offsets)
    todo = np.flatnonzero(lengths > 1)
    if todo.size == 0:
        return out
    cls = np.frexp((lengths[todo] - 1).astype(np.float64))[1]  # bit length of length - 1
    order = np.argsort(cls, kind="stable")
    todo, cls = todo[order], cls[order]
    bounds = np.flatnonzero(np.diff(cls)) + 1
    for seg_ids, e in zip(np.split(todo, bounds), cls[np.concatenate([[0], bounds])].tolist()):
        width = 1 << int(e)
        step = max(1, _SORT_CHUNK_ELEMS // width)
        for s in range(0, seg_ids.size, step):
            ids = seg_ids[s:s + step]
            row, col = _segments(lengths[ids])
            if ids[-1] - ids[0] + 1 == ids.size:  # consecutive segments: a contiguous range
                src = slice(int(offsets[ids[0]]), int(offsets[ids[-1] + 1]))
            else:
                src = offsets[ids][row] + col
            flat = row * width + col
            block = np.full((ids.size, width), _MAX64, dtype=np.uint64)
            block.ravel()[flat] = values[src]
            block.sort(axis=1)
            out[src] = block.ravel()[flat]
    return out


def _unique_sorted_segments(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort every segment of ``values`` (``offsets[0] == 0``) and drop repeated values within it."""
    s = _sort_segments(offsets, values)
    keep = np.ones(s.size, dtype=bool)
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    starts = offsets[:-1][np.diff(offsets) > 0]
    keep[starts] = True
    kept_before = np.zeros(s.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return kept_before[offsets], s[keep]


def _list_set_hashes(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """:func:`set_hashes` of one (large) list array."""
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise TypeError(f"set_hashes: expected a list or large_list column, got {col.type}")
    n = len(col)
    offs = col.offsets.to_numpy().astype(np.int64)  # the slice's n + 1 offsets into col.values
    child = col.values.slice(int(offs[0]), int(offs[-1] - offs[0]))
    h = token_hashes(child)
    lengths = np.diff(offs)
    keep = None
    if col.null_count:  # a null row may still span child values: drop them
        keep = np.repeat(col.is_valid().to_numpy(zero_copy_only=False), lengths)
    if child.null_count:
        valid = child.is_valid().to_numpy(zero_copy_only=False)
        keep = valid if keep is None else keep & valid
    if keep is not None:
        row = np.repeat(np.arange(n, dtype=np.int64), lengths)
        lengths = np.bincount(row[keep], minlength=n).astype(np.int64)
        h = h[keep]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _unique_sorted_segments(offsets, h)


def set_hashes(col) -> tuple[np.ndarray, np.ndarray]:
    """Each row's set of token hashes, de-duplicated and sorted, as CSR arrays.

    Parameters
    ----------
    col : pyarrow.ListArray, pyarrow.LargeListArray or pyarrow.ChunkedArray of those
        One list of tokens (strings or integers, see :func:`token_hashes`) per row; slices
        (non-zero offset) are fine.

    Returns
    -------
    offsets : ndarray of shape (n + 1,), int64
        ``offsets[0] == 0``; row ``i`` is ``hashes[offsets[i]:offsets[i + 1]]``.
    hashes : ndarray of shape (offsets[-1],), uint64
        Within a row strictly ascending: a set, repeated tokens count once. Null elements are
        dropped; a null row gives an empty range (the caller decides whether it is valid).

    Notes
    -----
    Complexity: O(N log L) for ``N`` tokens in rows of at most ``L`` (see :func:`_sort_segments`).
    """
    if isinstance(col, pa.ChunkedArray):
        parts = [_list_set_hashes(c) for c in col.chunks]
        if not parts:
            return np.zeros(1, np.int64), np.zeros(0, np.uint64)
        shift = np.cumsum([0] + [p[0][-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p[0][1:] + s for p, s in zip(parts, shift)]).astype(np.int64)
        return offsets, np.concatenate([p[1] for p in parts])
    return _list_set_hashes(col)


# --------------------------------------------------------------------------- signatures


def _minhash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` of :func:`minhash_signatures`: ``uint64`` from ``default_rng(seed)``, ``a`` odd."""
    a, b = np.random.default_rng(seed).integers(0, 1 << 64, size=(2, num_perm), dtype=np.uint64)
    return a | _U64(1), b


def _minhash_chunk(sig, rel, x, s, a, b, block):
    """Fold the elements ``x`` = ``[s, s + x.size)`` (whole rows or parts of rows) into ``sig``."""
    e = s + x.size
    inner = rel[np.searchsorted(rel, s, "right"):np.searchsorted(rel, e, "left")]  # row starts in (s, e)
    starts = np.concatenate([[s], inner])
    starts = starts[np.concatenate([[True], np.diff(starts) > 0])]  # empty rows repeat a start
    rows = np.searchsorted(rel, starts, "right") - 1  # the (non-empty) row of each piece
    B = block[:, :x.size]
    np.multiply(a[:, None], x[None, :], out=B)
    np.add(B, b[:, None], out=B)
    hi = B.view(np.uint32)[:, _HI_WORD::2]  # (a x + b) >> 32 without a pass
    mins = np.minimum.reduceat(hi, starts - s, axis=1)  # (num_perm, pieces)
    sig[rows] = np.minimum(sig[rows], mins.T)


def minhash_signatures(offsets: np.ndarray, hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures of sets given as CSR arrays (as :func:`set_hashes` returns them).

    Parameters
    ----------
    offsets : ndarray of shape (n + 1,), int
        Row ``i`` is ``hashes[offsets[i]:offsets[i + 1]]`` (non-decreasing).
    hashes : ndarray of shape (N,), uint64
        Token hashes (:func:`token_hashes`); repeated values within a row do not change the result.
    num_perm : int
        Number of hash functions (signature length), >= 1.
    seed : int
        ``a_i`` (odd) and ``b_i`` are drawn as ``uint64`` from ``np.random.default_rng(seed)``:
        signatures are comparable when computed with the same ``seed`` and ``num_perm``.

    Returns
    -------
    sig : ndarray of shape (n, num_perm), uint32
        ``sig[row, i] = min_{x in row} ((a_i x + b_i) mod 2^64) >> 32``; ``0xFFFFFFFF`` everywhere
        for an empty row. ``mean(sig_A == sig_B)`` estimates the Jaccard similarity (unbiased up
        to ties of the 32-bit values, probability ~ ``|A u B| / 2^32`` per hash).

    Notes
    -----
    The elements are processed in chunks of a ``(num_perm, chunk)`` uint64 block (32 MiB) that
    may cut rows; ``np.minimum.reduceat`` over the row pieces of a chunk, folded into the rows
    with ``np.minimum``. Complexity: O(N num_perm) time, O(n num_perm) memory plus the block.
    """
    num_perm = int(num_perm)
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    offsets = np.asarray(offsets, dtype=np.int64)
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = offsets.size - 1
    a, b = _minhash_params(num_perm, seed)
    sig = np.full((n, num_perm), _MAX32, dtype=np.uint32)
    rel = offsets - offsets[0]
    h = hashes[offsets[0]:offsets[-1]]
    step = max(1, _MH_CHUNK_BYTES // (8 * num_perm))
    block = np.empty((num_perm, min(step, h.size)), dtype=np.uint64)
    for s in range(0, h.size, step):
        _minhash_chunk(sig, rel, h[s:s + step], s, a, b, block)
    return sig


def hyperplane_signatures(X: np.ndarray, n_bits: int, seed: int) -> np.ndarray:
    """Random-hyperplane (SimHash) bits of the rows of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Vectors (converted to float64 block by block).
    n_bits : int
        Signature length, >= 1.
    seed : int
        ``R = np.random.default_rng(seed).standard_normal((d, n_bits))``.

    Returns
    -------
    bits : ndarray of shape (n, n_bits), uint8
        ``bits[i, j] = [X[i] . R[:, j] >= 0]``. Two vectors at angle ``theta`` agree on a bit with
        probability ``1 - theta / pi`` (Charikar). A zero row gets all ones (every projection is
        exactly zero), so zero rows collide with each other only; a row with a NaN gets all zeros.

    Notes
    -----
    Blocks of rows with a ``(rows, n_bits)`` projection of at most 32 MiB. Complexity: O(n d n_bits).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    n_bits = int(n_bits)
    if n_bits < 1:
        raise ValueError(f"n_bits must be >= 1, got {n_bits}")
    n, d = X.shape
    R = np.random.default_rng(seed).standard_normal((d, n_bits))
    out = np.empty((n, n_bits), dtype=np.uint8)
    step = max(1, _HP_CHUNK_BYTES // (8 * max(n_bits, d)))
    for s in range(0, n, step):
        proj = np.asarray(X[s:s + step], dtype=np.float64) @ R
        np.greater_equal(proj, 0.0, out=out[s:s + step])
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band of every signature.

    Parameters
    ----------
    sig : ndarray of shape (n, m), unsigned integer (or bool / signed, reinterpreted bitwise)
        MinHash (uint32) or hyperplane (uint8) signatures, ``m >= bands * rows``; the columns
        after the first ``bands * rows`` are ignored.
    bands, rows : int
        Band ``j`` is the columns ``j * rows .. (j + 1) * rows - 1``.

    Returns
    -------
    keys : ndarray of shape (n, bands), uint64
        ``h <- fmix64(j + salt)``, then ``h <- fmix64(h ^ v)`` for the band's values ``v`` in
        order. Equal band values give equal keys; for a fixed ``h`` the step is injective in ``v``,
        so different values in the same band collide only by chance (~``2^-64`` per pair). Band
        ``j`` is mixed in, so equal values in different bands give different keys.
    """
    sig = np.asarray(sig)
    bands, rows = int(bands), int(rows)
    if sig.ndim != 2 or bands < 1 or rows < 1 or sig.shape[1] < bands * rows:
        raise ValueError(f"band_keys: need a 2-D signature with >= bands * rows = {bands * rows} columns, "
                         f"got shape {sig.shape} (bands={bands}, rows={rows})")
    if sig.dtype.kind == "b":
        sig = sig.view(np.uint8)
    elif sig.dtype.kind == "i":
        sig = sig.view(np.dtype(f"u{sig.dtype.itemsize}"))
    elif sig.dtype.kind != "u":
        raise TypeError(f"band_keys: integer signatures expected, got {sig.dtype}")
    n = sig.shape[0]
    V = sig[:, :bands * rows].reshape(n, bands, rows)
    h = np.empty((n, bands), dtype=np.uint64)
    h[:] = _fmix64(np.arange(bands, dtype=np.uint64) + _BAND_SALT)
    for k in range(rows):
        np.bitwise_xor(h, V[:, :, k], out=h)
        _fmix64(h)
    return h


# --------------------------------------------------------------------------- banding parameters


def collision_probability(similarity, kind: str):
    """Probability that one hash of two items with this similarity collides.

    Parameters
    ----------
    similarity : float or array_like
        Jaccard similarity (``kind="jaccard"``, clipped to [0, 1]) or cosine similarity
        (``kind="cosine"``, clipped to [-1, 1]).
    kind : {"jaccard", "cosine"}

    Returns
    -------
    p : float or ndarray
        ``s`` for MinHash (Broder); ``1 - arccos(s) / pi`` for a random hyperplane (Charikar).
        A float for a scalar input.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if kind == "jaccard":
        p = np.clip(s, 0.0, 1.0)
    elif kind == "cosine":
        p = 1.0 - np.arccos(np.clip(s, -1.0, 1.0)) / np.pi
    else:
        raise ValueError(f"kind must be 'jaccard' or 'cosine', got {kind!r}")
    return float(p) if p.ndim == 0 else p


def s_curve(p, bands, rows):
    """Probability ``1 - (1 - p^rows)^bands`` that two items share at least one band key.

    Parameters
    ----------
    p : float or array_like
        Per-hash collision probability (:func:`collision_probability`), in [0, 1].
    bands, rows : int or array_like
        Banding (broadcast with ``p``); ``bands >= 1``.

    Returns
    -------
    prob : float or ndarray
        Computed as ``-expm1(bands * log1p(-p^rows))`` (accurate when ``p^rows`` is tiny); a float
        for scalar inputs.
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = -np.expm1(np.asarray(bands, dtype=np.float64) * np.log1p(-(p ** np.asarray(rows, dtype=np.float64))))
    return float(out) if out.ndim == 0 else out


def lsh_params(threshold: float, kind: str, recall: float = 0.95, max_hashes: int = 128) -> tuple[int, int]:
    """Banding ``(bands, rows)`` that finds pairs at ``threshold`` with probability >= ``recall``.

    Parameters
    ----------
    threshold : float
        Similarity threshold (Jaccard or cosine), in (0, 1].
    kind : {"jaccard", "cosine"}
    recall : float
        Target probability, in (0, 1), that a pair exactly at the threshold becomes a candidate.
    max_hashes : int
        Budget of ``bands * rows`` hashes (>= 1).

    Returns
    -------
    bands, rows : int
        With ``p = collision_probability(threshold, kind)``, for every ``r`` the least ``b(r)``
        with ``s_curve(p, b(r), r) >= recall`` (``ceil(log(1 - recall) / log(1 - p^r))``, checked
        against the S-curve for round-off); the largest ``r`` with ``b(r) r <= max_hashes`` wins:
        the sharpest S-curve, hence the fewest false candidates, under the budget (more similar
        pairs are found with a higher probability). If even ``r = 1`` needs more than
        ``max_hashes`` bands, ``(max_hashes, 1)``, whose recall falls short of the target. At
        ``threshold == 1`` (``p = 1``, every banding has recall 1) this rule gives
        ``(1, max_hashes)``: one band of all the hashes, i.e. identical signatures only.

    Raises
    ------
    ValueError
        ``threshold`` outside (0, 1] (named ``grouping.threshold``), ``recall`` outside (0, 1),
        ``max_hashes < 1`` or an unknown ``kind``.
    """
    t = float(threshold)
    if not (math.isfinite(t) and 0.0 < t <= 1.0):
        raise ValueError(f"grouping.threshold must be in (0, 1], got {threshold!r}")
    q = float(recall)
    if not (0.0 < q < 1.0):
        raise ValueError(f"recall must be in (0, 1), got {recall!r}")
    max_hashes = int(max_hashes)
    if max_hashes < 1:
        raise ValueError(f"max_hashes must be >= 1, got {max_hashes}")
    p = collision_probability(t, kind)
    r = np.arange(1, max_hashes + 1, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        b = np.maximum(np.ceil(math.log1p(-q) / np.log1p(-(p ** r))), 1.0)
        b = np.where(np.isfinite(b), b, np.inf)
        b += s_curve(p, b, r) < q  # the ceil of a quotient just below an integer
        b -= (b > 1) & (s_curve(p, b - 1, r) >= q)  # ... or just above one
    ok = np.flatnonzero(b * r <= max_hashes)
    if ok.size == 0:
        return max_hashes, 1
    best = int(ok[-1])
    return int(b[best]), int(r[best])


# --------------------------------------------------------------------------- exact verification


def _chunk_bounds(offsets: np.ndarray, budget: int) -> list[int]:
    """Segment indices ``0 = i_0 < ... < i_k = n`` cutting CSR ``offsets`` into ~``budget`` elements."""
    n = offsets.size - 1
    total = int(offsets[-1] - offsets[0])
    marks = offsets[0] + np.arange(1, total // budget + 1, dtype=np.int64) * budget
    return np.unique(np.concatenate([[0], np.searchsorted(offsets, marks), [n]])).tolist()


def _intersections(off_a, h_a, off_b, h_b) -> np.ndarray:
    """``|A_i n B_i|`` for sets of unique values: merge each pair, sort it, count equal neighbours."""
    la, lb = np.diff(off_a), np.diff(off_b)
    n = la.size
    lc = la + lb
    oc = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lc, out=oc[1:])
    merged = np.empty(int(oc[-1]), dtype=np.uint64)
    seg, col = _segments(la)
    merged[oc[seg] + col] = h_a[off_a[0]:off_a[-1]]
    seg, col = _segments(lb)
    merged[oc[seg] + la[seg] + col] = h_b[off_b[0]:off_b[-1]]
    s = _sort_segments(oc, merged)
    seg = np.repeat(np.arange(n, dtype=np.int64), lc)
    eq = (s[1:] == s[:-1]) & (seg[1:] == seg[:-1])
    return np.bincount(seg[1:][eq], minlength=n)


def jaccard_pairs(off_a: np.ndarray, h_a: np.ndarray, off_b: np.ndarray, h_b: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity ``|A_i n B_i| / |A_i u B_i|`` of the pairs of sets ``(A_i, B_i)``.

    Parameters
    ----------
    off_a, h_a : ndarray
        The sets ``A_i`` as CSR arrays (offsets of shape (n + 1,), uint64 values), each row
        without repeated values (as :func:`set_hashes` returns them; sorting is not required).
    off_b, h_b : ndarray
        The sets ``B_i``, the same number ``n`` of rows.

    Returns
    -------
    jaccard : ndarray of shape (n,), float64
        1.0 for two empty sets (identical), 0.0 when exactly one is empty.

    Notes
    -----
    Per chunk of pairs (~4M elements), every pair's two sets are concatenated and sorted
    (:func:`_sort_segments`); equal neighbours within a pair are its intersection. Complexity:
    O(N log L).
    """
    off_a = np.asarray(off_a, dtype=np.int64)
    off_b = np.asarray(off_b, dtype=np.int64)
    h_a = np.asarray(h_a, dtype=np.uint64)
    h_b = np.asarray(h_b, dtype=np.uint64)
    if off_a.size != off_b.size:
        raise ValueError(f"jaccard_pairs: {off_a.size - 1} sets on one side, {off_b.size - 1} on the other")
    inter = np.zeros(off_a.size - 1, dtype=np.int64)
    bounds = _chunk_bounds(off_a + off_b, _SORT_CHUNK_ELEMS)
    for s, e in zip(bounds[:-1], bounds[1:]):
        inter[s:e] = _intersections(off_a[s:e + 1], h_a, off_b[s:e + 1], h_b)
    union = np.diff(off_a) + np.diff(off_b) - inter
    out = np.ones(inter.size, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def cosine_pairs(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays.

    Returns
    -------
    cos : ndarray of shape (n,), float64
        ``A_i . B_i / (|A_i| |B_i|)`` clipped to [-1, 1]; 0.0 when either row is zero (as
        ``sklearn.metrics.pairwise.cosine_similarity``).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or A.shape != B.shape:
        raise ValueError(f"cosine_pairs: two (n, d) arrays of the same shape expected, got {A.shape} and {B.shape}")
    dot = np.einsum("ij,ij->i", A, B)
    den = np.sqrt(np.einsum("ij,ij->i", A, A)) * np.sqrt(np.einsum("ij,ij->i", B, B))
    out = np.zeros(A.shape[0], dtype=np.float64)
    np.divide(dot, den, out=out, where=den > 0)
    return np.clip(out, -1.0, 1.0, out=out)
