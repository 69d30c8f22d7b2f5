"""kernels/minhash: token and set hashes, MinHash / hyperplane signatures, banding (no Spark)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from clusterlake.kernels import minhash as MH

M64 = (1 << 64) - 1


# --------------------------------------------------------------------------- references


def ref_fmix(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def ref_bytes_hash(b: bytes) -> int:
    """The string hash of the module docstring, in plain Python."""
    total = sum(ref_fmix((((k << 8) | c) + int(MH._BYTE_SALT)) & M64) for k, c in enumerate(b)) & M64
    return ref_fmix(((len(b) * int(MH._GOLDEN) + total) & M64) ^ int(MH._STR_SALT))


def ref_int_hash(v: int) -> int:
    return ref_fmix((v & M64) ^ int(MH._INT_SALT))


def ref_token_hash(t) -> int:
    return ref_bytes_hash(t.encode("utf-8")) if isinstance(t, str) else ref_int_hash(t)


def ref_sets(col: pa.Array) -> list[list[int]]:
    """Sorted unique token hashes of each row, element by element, by the Python references."""
    cache: dict = {}
    out = []
    for row in col.to_pylist():
        toks = {t for t in (row or []) if t is not None}
        out.append(sorted(cache[t] if t in cache else cache.setdefault(t, ref_token_hash(t)) for t in toks))
    return out


def csr_rows(offsets, hashes) -> list[list[int]]:
    return [[int(x) for x in hashes[offsets[i]:offsets[i + 1]]] for i in range(len(offsets) - 1)]


def random_token_lists(rng, n, max_len, vocab, strings, null_p=0.0):
    rows = []
    for _ in range(n):
        if rng.random() < null_p:
            rows.append(None)
            continue
        toks = rng.integers(0, vocab, rng.integers(0, max_len + 1)).tolist()
        toks = [f"w{t}" if strings else t for t in toks]
        rows.append([None if rng.random() < null_p else t for t in toks])
    return rows


# --------------------------------------------------------------------------- token_hashes


def test_token_hashes_pinned_values():
    strs = pa.array(["", "a", "hello", "é", "日本語", "x" * 100])
    expected = [16507096966833969069, 7566724644131950076, 7974132714154768792, 7726274976446407091,
                13904586731065370485, 4196284883173133064]
    h = MH.token_hashes(strs)
    assert h.dtype == np.uint64
    assert h.tolist() == expected
    assert MH.token_hashes(strs).tolist() == expected
    ints = np.array([0, 5, -1, 2**40])
    assert MH.token_hashes(ints).tolist() == [13258805574571075079, 2527901277591416994, 15646958350009268986,
                                              15176570377200154944]


def test_token_hashes_match_the_python_reference():
    rng = np.random.default_rng(3)
    words = ["", "a", "ab", "ba", "\x00", "\x00\x00", "é", "e\u0301", "日本語", "🙂" * 20, "z" * 64, "z" * 65,
             "".join(chr(c) for c in rng.integers(32, 0x3000, 300))]
    got = MH.token_hashes(pa.array(words)).tolist()
    assert got == [ref_bytes_hash(w.encode("utf-8")) for w in words]
    assert len(set(got)) == len(words)  # "é" composed and decomposed differ
    ints = [0, 1, -1, 127, -128, 2**31 - 1, -2**31, 2**63 - 1, -2**63]
    assert MH.token_hashes(pa.array(ints, pa.int64())).tolist() == [ref_int_hash(v) for v in ints]


@pytest.mark.parametrize("typ", [pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()])
def test_integer_types_hash_like_int64(typ):
    info = np.iinfo(typ.to_pandas_dtype())
    vals = np.random.default_rng(1).integers(max(info.min, -2**40), min(info.max, 2**40), 1000, endpoint=True)
    ref = MH.token_hashes(pa.array(vals, pa.int64()))
    np.testing.assert_array_equal(MH.token_hashes(pa.array(vals, typ)), ref)
    np.testing.assert_array_equal(MH.token_hashes(vals.astype(typ.to_pandas_dtype())), ref)


def test_int32_and_int64_agree_and_string_layouts_agree():
    v = np.array([5, -5, 0, 123456789, -2**31])
    np.testing.assert_array_equal(MH.token_hashes(v.astype(np.int32)), MH.token_hashes(v.astype(np.int64)))
    words = ["über", "", "naïve", "日本", "🙂x", "plain"]
    h = MH.token_hashes(pa.array(words, pa.string()))
    np.testing.assert_array_equal(MH.token_hashes(pa.array(words, pa.large_string())), h)
    np.testing.assert_array_equal(MH.token_hashes(pa.array(words, pa.string_view())), h)
    np.testing.assert_array_equal(MH.token_hashes(pa.array([w.encode() for w in words], pa.binary())), h)
    np.testing.assert_array_equal(MH.token_hashes(np.array(words)), h)
    np.testing.assert_array_equal(MH.token_hashes(np.array(words, dtype=object)), h)
    np.testing.assert_array_equal(MH.token_hashes(pa.array(words).dictionary_encode()), h)
    np.testing.assert_array_equal(MH.token_hashes(pa.chunked_array([words[:2], words[2:]])), h)
    np.testing.assert_array_equal(MH.token_hashes(pa.array(words).slice(2, 3)), h[2:5])
    assert MH.token_hashes(pa.array(["5"]))[0] != MH.token_hashes(pa.array([5]))[0]


def test_token_hashes_chunked_string_path(monkeypatch):
    rng = np.random.default_rng(5)
    words = ["".join(chr(c) for c in rng.integers(97, 123, k)) for k in rng.integers(0, 90, 400)]
    whole = MH.token_hashes(pa.array(words))
    monkeypatch.setattr(MH, "_STR_CHUNK_BYTES", 7)
    np.testing.assert_array_equal(MH.token_hashes(pa.array(words)), whole)
    np.testing.assert_array_equal(MH.token_hashes(pa.array(words, pa.large_string()).slice(13)), whole[13:])
    assert whole.tolist() == [ref_bytes_hash(w.encode()) for w in words]


def test_token_hashes_no_collisions():
    rng = np.random.default_rng(11)
    raw = rng.integers(97, 123, (260_000, 8), dtype=np.uint8)
    raw[:, :3] = rng.integers(48, 58, (260_000, 3), dtype=np.uint8)  # some structure: digit prefixes
    words = np.unique(raw.view("S8").ravel())[:200_000]
    assert words.size == 200_000
    h = MH.token_hashes(pa.array(words.tolist(), pa.binary()).cast(pa.string()))
    assert np.unique(h).size == 200_000
    h = MH.token_hashes(np.arange(-100_000, 100_000))
    assert np.unique(h).size == 200_000


def test_token_hashes_rejects_other_types():
    with pytest.raises(TypeError):
        MH.token_hashes(pa.array([1.5, 2.5]))
    with pytest.raises(TypeError):
        MH.token_hashes(np.array([1.5]))
    assert MH.token_hashes(pa.array([], pa.string())).shape == (0,)
    assert MH.token_hashes(pa.array([], pa.int32())).shape == (0,)


# --------------------------------------------------------------------------- set_hashes


def test_set_hashes_duplicates_nulls_and_empty_rows():
    col = pa.array([["a", "b", "a", "b"], None, ["c", None, "c"], [], [None], ["a"]])
    off, h = MH.set_hashes(col)
    assert off.dtype == np.int64 and h.dtype == np.uint64
    ha, hb, hc = MH.token_hashes(pa.array(["a", "b", "c"])).tolist()
    assert off.tolist() == [0, 2, 2, 3, 3, 3, 4]
    assert csr_rows(off, h) == [sorted([ha, hb]), [], [hc], [], [], [ha]]


def test_set_hashes_null_row_spanning_values():
    col = pa.ListArray.from_arrays(pa.array([0, 2, 4, 5]), pa.array([1, 2, 3, 4, 5]),
                                   mask=pa.array([False, True, False]))
    off, h = MH.set_hashes(col)
    assert off.tolist() == [0, 2, 2, 3]
    assert csr_rows(off, h) == ref_sets(col)


@pytest.mark.parametrize("strings", [True, False])
@pytest.mark.parametrize("large", [False, True])
def test_set_hashes_random_against_reference(strings, large, monkeypatch):
    monkeypatch.setattr(MH, "_SORT_CHUNK_ELEMS", 256)  # several chunks per length class
    rng = np.random.default_rng(7 + strings + 2 * large)
    rows = random_token_lists(rng, 400, 120, 60, strings, null_p=0.1)
    rows += [list(range(300)) if not strings else [f"w{i}" for i in range(300)]]  # wider than a chunk
    typ = pa.large_list(pa.string() if strings else pa.int64()) if large else None
    col = pa.array(rows, typ)
    off, h = MH.set_hashes(col)
    assert csr_rows(off, h) == ref_sets(col)
    sl = col.slice(37, 200)
    off2, h2 = MH.set_hashes(sl)
    assert csr_rows(off2, h2) == ref_sets(sl)
    assert all(np.all(np.diff(h[off[i]:off[i + 1]].astype(np.float64)) > 0) for i in range(len(rows)))


def test_set_hashes_chunked_array_equals_combined():
    rng = np.random.default_rng(2)
    rows = random_token_lists(rng, 300, 20, 50, True, null_p=0.05)
    whole = pa.array(rows)
    chunked = pa.chunked_array([pa.array(rows[:100]), whole.slice(100, 0), pa.array(rows[100:])])
    off, h = MH.set_hashes(whole)
    off_c, h_c = MH.set_hashes(chunked)
    np.testing.assert_array_equal(off_c, off)
    np.testing.assert_array_equal(h_c, h)
    off_e, h_e = MH.set_hashes(pa.chunked_array([], pa.list_(pa.string())))
    assert off_e.tolist() == [0] and h_e.size == 0
    with pytest.raises(TypeError):
        MH.set_hashes(pa.array(["a", "b"]))


# --------------------------------------------------------------------------- minhash_signatures


def naive_minhash(off, h, num_perm, seed):
    a, b = MH._minhash_params(num_perm, seed)
    sig = np.full((len(off) - 1, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    for i in range(len(off) - 1):
        x = h[off[i]:off[i + 1]]
        if x.size:
            sig[i] = ((x[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0).astype(np.uint32)
    return sig


def test_minhash_pinned_and_against_naive(monkeypatch):
    off, h = MH.set_hashes(pa.array([["a", "b", "c"]]))
    assert MH.minhash_signatures(off, h, 4, 0).tolist() == [[2005541865, 26808396, 382839978, 589694536]]
    rng = np.random.default_rng(4)
    off, h = MH.set_hashes(pa.array(random_token_lists(rng, 300, 40, 1000, False, null_p=0.1)))
    ref = naive_minhash(off, h, 16, 9)
    sig = MH.minhash_signatures(off, h, 16, 9)
    assert sig.dtype == np.uint32 and sig.shape == (300, 16)
    np.testing.assert_array_equal(sig, ref)
    monkeypatch.setattr(MH, "_MH_CHUNK_BYTES", 8 * 16 * 7)  # chunks of 7 elements cut the rows
    np.testing.assert_array_equal(MH.minhash_signatures(off, h, 16, 9), ref)
    # a window of rows (offsets not starting at 0), empty rows all 0xFFFFFFFF
    np.testing.assert_array_equal(MH.minhash_signatures(off[50:120], h, 16, 9), ref[50:119])
    empty = np.diff(off) == 0
    assert empty.any() and (ref[empty] == 0xFFFFFFFF).all() and (ref[~empty] != 0xFFFFFFFF).any()
    assert not np.array_equal(MH.minhash_signatures(off, h, 16, 10), ref)  # the seed matters
    assert MH.minhash_signatures(np.zeros(1, np.int64), np.zeros(0, np.uint64), 8, 0).shape == (0, 8)


def test_minhash_is_unbiased_with_binomial_variance():
    rng = np.random.default_rng(2024)
    n_pairs, num_perm = 2000, 128
    rows_a, rows_b, jac = [], [], []
    for k in range(n_pairs):
        union = int(rng.integers(20, 201))
        common = int(rng.integers(0, union + 1))
        only_a = int(rng.integers(0, union - common + 1))
        toks = (k * 1000 + np.arange(union)).tolist()
        rows_a.append(toks[:common + only_a])
        rows_b.append(toks[:common] + toks[common + only_a:])
        jac.append(common / union)
    jac = np.array(jac)
    sig_a = MH.minhash_signatures(*MH.set_hashes(pa.array(rows_a)), num_perm, 1)
    sig_b = MH.minhash_signatures(*MH.set_hashes(pa.array(rows_b)), num_perm, 1)
    est = (sig_a == sig_b).mean(axis=1)
    err = est - jac
    var = jac * (1 - jac) / num_perm
    assert abs(err.mean()) <= 4 * math.sqrt(var.sum()) / n_pairs
    inner = (jac > 0) & (jac < 1)
    assert 0.8 <= np.mean(err[inner] ** 2 / var[inner]) <= 1.25
    assert (est[jac == 0] == 0).all() and (est[jac == 1] == 1).all()


# --------------------------------------------------------------------------- hyperplanes and bands


def test_hyperplane_signatures_definition(monkeypatch):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((500, 12)).astype(np.float32)
    X[7] = 0
    bits = MH.hyperplane_signatures(X, 40, 3)
    assert bits.dtype == np.uint8 and bits.shape == (500, 40)
    R = np.random.default_rng(3).standard_normal((12, 40))
    np.testing.assert_array_equal(bits, (X.astype(np.float64) @ R >= 0).astype(np.uint8))
    assert (bits[7] == 1).all()
    monkeypatch.setattr(MH, "_HP_CHUNK_BYTES", 8 * 40 * 33)
    np.testing.assert_array_equal(MH.hyperplane_signatures(X, 40, 3), bits)
    with pytest.raises(ValueError):
        MH.hyperplane_signatures(X[0], 4, 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.int32, bool])
def test_band_keys_equal_iff_band_values_equal(dtype):
    rng = np.random.default_rng(6)
    high = 2 if dtype is bool else 200
    sig = rng.integers(0, high, (300, 12)).astype(dtype)
    sig[1] = sig[0]
    sig[2] = sig[0]
    sig[2, 4] = (sig[0, 4] + 1) % high if dtype is not bool else ~sig[0, 4]  # band 1 of 3 (rows of 4) differs
    keys = MH.band_keys(sig, 3, 4)
    assert keys.dtype == np.uint64 and keys.shape == (300, 3)
    np.testing.assert_array_equal(keys[1], keys[0])
    assert keys[2, 0] == keys[0, 0] and keys[2, 1] != keys[0, 1] and keys[2, 2] == keys[0, 2]
    for j in range(3):  # equal keys in a band <=> equal band values
        vals = sig[:, 4 * j:4 * j + 4].astype(np.int64)
        _, by_val = np.unique(vals, axis=0, return_inverse=True)
        _, by_key = np.unique(keys[:, j], return_inverse=True)
        assert np.array_equal(by_val.ravel()[:, None] == by_val.ravel()[None, :],
                              by_key[:, None] == by_key[None, :])
    same = np.zeros((1, 8), dtype)
    k = MH.band_keys(same, 2, 4)
    assert k[0, 0] != k[0, 1]  # the band index is mixed in
    np.testing.assert_array_equal(MH.band_keys(np.hstack([sig, sig]), 3, 4), keys)  # extra columns ignored


def test_band_keys_errors():
    with pytest.raises(ValueError):
        MH.band_keys(np.zeros((4, 10), np.uint32), 3, 4)
    with pytest.raises(ValueError):
        MH.band_keys(np.zeros(10, np.uint32), 1, 4)
    with pytest.raises(TypeError):
        MH.band_keys(np.zeros((4, 10)), 2, 4)


def binomial_ok(hits: np.ndarray, q: float) -> bool:
    return abs(hits.mean() - q) <= 4 * math.sqrt(q * (1 - q) / hits.size)


@pytest.mark.parametrize("size,shared", [(85, 70), (90, 60), (100, 25)])  # J = 0.7, 0.5, 1/7
def test_jaccard_banding_recall_follows_the_s_curve(size, shared):
    bands, rows = MH.lsh_params(0.7, "jaccard")
    assert (bands, rows) == (17, 5)
    n_pairs = 4000
    base = np.arange(n_pairs)[:, None] * 1000
    skip = size - shared
    a = base + np.arange(size)
    b = base + np.arange(skip, skip + size)
    jac = shared / (2 * size - shared)
    sig_a = MH.minhash_signatures(*MH.set_hashes(pa.array(list(a))), bands * rows, 12)
    sig_b = MH.minhash_signatures(*MH.set_hashes(pa.array(list(b))), bands * rows, 12)
    hits = (MH.band_keys(sig_a, bands, rows) == MH.band_keys(sig_b, bands, rows)).any(axis=1)
    assert binomial_ok(hits, MH.s_curve(jac, bands, rows))


@pytest.mark.parametrize("cos", [0.8, 0.6])
def test_cosine_banding_recall_follows_the_s_curve(cos):
    bands, rows = MH.lsh_params(0.8, "cosine")
    rng = np.random.default_rng(int(cos * 10))
    n_pairs, d = 3000, 24
    U = rng.standard_normal((n_pairs, d))
    W = rng.standard_normal((n_pairs, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    W -= np.einsum("ij,ij->i", W, U)[:, None] * U
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    V = cos * U + math.sqrt(1 - cos**2) * W
    np.testing.assert_allclose(MH.cosine_pairs(U, V), cos, atol=1e-12)
    hits = np.empty(n_pairs, dtype=bool)
    for i in range(n_pairs):  # fresh hyperplanes per pair: independent trials
        sig = MH.hyperplane_signatures(np.stack([U[i], V[i]]), bands * rows, i)
        keys = MH.band_keys(sig, bands, rows)
        hits[i] = (keys[0] == keys[1]).any()
    assert binomial_ok(hits, MH.s_curve(MH.collision_probability(cos, "cosine"), bands, rows))


# --------------------------------------------------------------------------- banding parameters


def test_collision_probability_and_s_curve():
    assert MH.collision_probability(0.3, "jaccard") == 0.3
    assert MH.collision_probability(1.0, "cosine") == 1.0
    assert MH.collision_probability(0.0, "cosine") == pytest.approx(0.5)
    assert MH.collision_probability(-1.0, "cosine") == pytest.approx(0.0)
    assert isinstance(MH.collision_probability(0.5, "cosine"), float)
    np.testing.assert_allclose(MH.collision_probability(np.array([0.5, 2.0]), "cosine"), [2 / 3, 1.0])
    with pytest.raises(ValueError):
        MH.collision_probability(0.5, "euclidean")
    assert MH.s_curve(0.7, 17, 5) == pytest.approx(1 - (1 - 0.7**5) ** 17, rel=1e-12)
    np.testing.assert_allclose(MH.s_curve(np.array([0.0, 1.0, 0.5]), 4, 2), [0.0, 1.0, 1 - 0.75**4])
    assert MH.s_curve(1e-3, 3, 4) == pytest.approx(3e-12, rel=1e-6)  # accurate for tiny p^r


def test_lsh_params_example_and_edges():
    assert MH.lsh_params(0.7, "jaccard", 0.95, 128) == (17, 5)
    assert MH.lsh_params(0.7, "jaccard") == (17, 5)
    assert MH.lsh_params(1.0, "jaccard") == (1, 128)
    assert MH.lsh_params(1.0, "cosine", max_hashes=64) == (1, 64)
    assert MH.lsh_params(0.01, "jaccard") == (128, 1)  # recall out of reach: all bands of one row
    for bad in (0, 0.0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match="grouping.threshold"):
            MH.lsh_params(bad, "jaccard")
    for bad in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match="recall"):
            MH.lsh_params(0.5, "jaccard", recall=bad)
    with pytest.raises(ValueError):
        MH.lsh_params(0.5, "hamming")


@pytest.mark.parametrize("kind", ["jaccard", "cosine"])
def test_lsh_params_reach_recall_within_budget(kind):
    for t in np.linspace(0.05, 0.99, 48):
        for recall in (0.5, 0.9, 0.95, 0.99):
            for max_hashes in (16, 64, 128, 200):
                b, r = MH.lsh_params(float(t), kind, recall, max_hashes)
                p = MH.collision_probability(float(t), kind)
                assert b >= 1 and r >= 1 and b * r <= max_hashes
                if (b, r) == (max_hashes, 1) and MH.s_curve(p, b, r) < recall:
                    continue  # out of reach: the documented fallback
                assert MH.s_curve(p, b, r) >= recall
                assert b == 1 or MH.s_curve(p, b - 1, r) < recall  # fewest bands
                for r2 in range(r + 1, max_hashes + 1):  # no longer band fits the budget
                    b2 = max_hashes // r2
                    assert b2 == 0 or MH.s_curve(p, b2, r2) < recall


# --------------------------------------------------------------------------- exact verification


def test_jaccard_pairs_against_python_sets(monkeypatch):
    monkeypatch.setattr(MH, "_SORT_CHUNK_ELEMS", 300)  # several chunks of pairs
    rng = np.random.default_rng(12)
    rows_a = random_token_lists(rng, 500, 60, 80, True)
    rows_b = [r if i % 7 == 0 else random_token_lists(rng, 1, 60, 80, True)[0] for i, r in enumerate(rows_a)]
    rows_a[:3], rows_b[:3] = [[], ["x"], []], [[], [], ["y"]]
    off_a, h_a = MH.set_hashes(pa.array(rows_a))
    off_b, h_b = MH.set_hashes(pa.array(rows_b))
    got = MH.jaccard_pairs(off_a, h_a, off_b, h_b)
    ref = [len(set(a) & set(b)) / len(set(a) | set(b)) if (a or b) else 1.0 for a, b in zip(rows_a, rows_b)]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)
    assert got[:3].tolist() == [1.0, 0.0, 0.0]
    # windows of rows: offsets not starting at 0
    np.testing.assert_allclose(MH.jaccard_pairs(off_a[100:201], h_a, off_b[100:201], h_b), ref[100:200], atol=1e-15)
    with pytest.raises(ValueError):
        MH.jaccard_pairs(off_a, h_a, off_b[:-1], h_b)


def test_cosine_pairs_against_sklearn():
    rng = np.random.default_rng(13)
    A = rng.standard_normal((200, 9))
    B = rng.standard_normal((200, 9))
    B[:20] = A[:20] * 3
    B[20:30] = -A[20:30]
    A[30] = 0
    B[31] = 0
    got = MH.cosine_pairs(A, B)
    np.testing.assert_allclose(got, np.diag(cosine_similarity(A, B)), rtol=0, atol=1e-12)
    assert got[30] == 0.0 and got[31] == 0.0
    assert (got[:20] <= 1.0).all() and (got[20:30] >= -1.0).all()
    with pytest.raises(ValueError):
        MH.cosine_pairs(A, B[:, :3])
