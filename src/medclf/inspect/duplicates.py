"""Exact and near duplicate images, within and across splits.

*Exact* duplicates share their content hash (the BLAKE2b hash of the file bytes that the
preprocessing cache uses, :func:`medclf.data.preprocess.content_hash`).

*Near* duplicates are the same picture after resizing, re-encoding (JPEG quality, PNG vs
JPEG), a brightness/contrast change or a little noise. Each image is reduced to a small
grayscale thumbnail; two images are a near-duplicate pair when

* their 64-bit perceptual hashes (pHash: sign of the 8x8 lowest DCT frequencies of a 32x32
  thumbnail, the method of Zauner 2010 / the ``imagehash`` library) differ in at most
  ``max_hash_distance`` bits, **and**
* the Pearson correlation of their 32x32 thumbnails is at least ``min_correlation``.

The correlation is invariant to affine intensity changes, so thumbnails made from the
normalised arrays of the training pipeline give the same answer as thumbnails made from
the files. Both conditions must hold: chest X-rays of different patients look alike at
low resolution and can correlate above 0.95 (measured on PneumoniaMNIST: at most 0.96), re-encoded or
re-contrasted copies correlate above 0.97 (covid19-xray: 0.977-0.999).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.fft import dctn
from torch.nn import functional as F

THUMB = 32
MIN_CORRELATION = 0.97
MAX_HASH_DISTANCE = 10
PCA_SAMPLE = 20000  # thumbnails the projection's axes are fitted on


def thumbnail(array: np.ndarray | torch.Tensor, size: int = THUMB) -> np.ndarray:
    """A ``(size, size)`` float32 grayscale thumbnail of one image.

    Args:
        array: ``(H, W)``, ``(C, H, W)`` (channels averaged) or a volume ``(C, D, H, W)``
            (the middle slice is used), any intensity scale.
        size: thumbnail side, pixels (area averaging when shrinking, bilinear when growing).
    """
    t = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if t.ndim == 4:
        t = t[:, t.shape[1] // 2]
    if t.ndim == 3:
        t = t.mean(dim=0)
    t = t[None, None]
    if t.shape[-1] >= size and t.shape[-2] >= size:
        t = F.adaptive_avg_pool2d(t, size)
    else:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def phash(thumb: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash of a 32x32 thumbnail, as a bool array ``(64,)``.

    DCT-II of the thumbnail, the 8x8 lowest frequencies, each compared with their median
    (Zauner 2010; the ``imagehash.phash`` recipe).
    """
    low = dctn(np.asarray(thumb, dtype=np.float64), type=2, norm="ortho")[:8, :8].ravel()
    return low > np.median(low)


def _standardise(thumbs: np.ndarray) -> np.ndarray:
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norm, out=np.zeros_like(flat), where=norm > 1e-12)


def near_duplicate_pairs(thumbs: np.ndarray, exclude: set[tuple[int, int]] | None = None,
                         min_correlation: float = MIN_CORRELATION,
                         max_hash_distance: int = MAX_HASH_DISTANCE,
                         block: int = 1024, components: int = 16) -> list[tuple[int, int, float, int]]:
    """Pairs of near-duplicate thumbnails, without comparing all pairs.

    The standardised thumbnails are unit vectors, so a correlation of at least ``r`` is a
    Euclidean distance of at most ``sqrt(2 (1 - r))``. An orthogonal projection never
    lengthens a distance, so every such pair is also within that radius after projecting
    onto the first ``components`` principal axes (scikit-learn ``PCA``); the candidates
    are found by a radius query on a tree over the projections (scikit-learn
    ``NearestNeighbors``, KD/ball tree: about ``N log N`` for data that is not all alike)
    and each is then checked exactly (correlation in float64 and pHash distance). The
    result equals the all-pairs comparison (:func:`near_duplicate_pairs_all`).

    Args:
        thumbs: float array ``(N, 32, 32)`` from :func:`thumbnail`.
        exclude: index pairs ``(i, j)`` with ``i < j`` not to report (exact duplicates).
        min_correlation: smallest Pearson correlation of a pair.
        max_hash_distance: largest pHash Hamming distance of a pair, bits.
        block: queries per radius search (memory grows with ``block`` times the candidates
            per image).
        components: dimensions of the projection.

    Returns:
        ``(i, j, correlation, hash_distance)`` with ``i < j``, sorted by ``(i, j)``.
        Flat images (zero variance) correlate with nothing.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    n = len(thumbs)
    if n < 2:
        return []
    exclude = exclude or set()
    flat = np.asarray(thumbs, dtype=np.float32).reshape(n, -1)

    def unit(rows: slice | np.ndarray) -> np.ndarray:
        return _standardise(flat[rows]).astype(np.float32)  # float64 only per chunk

    k = min(components, n - 1, flat.shape[1])  # >= 1: n >= 2 here
    # the principal axes from a sample, the projection chunk by chunk: no standardised copy of
    # every thumbnail is held (memory stays flat in N); any orthonormal projection keeps the
    # guarantee above, so the pairs found are the same
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, PCA_SAMPLE), replace=False))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=0).fit(unit(sample))
    projected = np.concatenate([pca.transform(unit(slice(i, i + 8192))) for i in range(0, n, 8192)])
    radius = float(np.sqrt(max(0.0, 2.0 * (1.0 - min_correlation)))) + 1e-3  # float32 slack
    tree = NearestNeighbors(radius=radius).fit(projected)
    hashes = np.stack([phash(t) for t in np.asarray(thumbs)])
    pairs = []
    for start in range(0, n, block):
        neighbours = tree.radius_neighbors(projected[start:start + block], return_distance=False)
        for offset, found in enumerate(neighbours):
            i = start + offset
            js = np.sort(found[found > i])
            if not len(js):
                continue
            distances = np.count_nonzero(hashes[js] != hashes[i], axis=1)
            js, distances = js[distances <= max_hash_distance], distances[distances <= max_hash_distance]
            if not len(js):
                continue
            corr = _standardise(flat[js]) @ _standardise(flat[i:i + 1])[0]
            for j, c, d in zip(js, corr, distances):
                if c >= min_correlation and (i, int(j)) not in exclude:
                    pairs.append((i, int(j), float(c), int(d)))
    return sorted(pairs)


def near_duplicate_pairs_all(thumbs: np.ndarray, exclude: set[tuple[int, int]] | None = None,
                             min_correlation: float = MIN_CORRELATION,
                             max_hash_distance: int = MAX_HASH_DISTANCE,
                             block: int = 1024) -> list[tuple[int, int, float, int]]:
    """:func:`near_duplicate_pairs` by comparing all pairs (``N^2``; the reference the
    indexed search is tested against)."""
    n = len(thumbs)
    if n < 2:
        return []
    exclude = exclude or set()
    z = _standardise(np.asarray(thumbs, dtype=np.float32).reshape(n, -1))
    hashes = np.stack([phash(t) for t in thumbs]).astype(np.int32)
    pairs = []
    for start in range(0, n, block):
        corr = z[start:start + block] @ z.T
        rows, cols = np.nonzero(corr >= min_correlation)
        for i, j in zip(rows + start, cols):
            if j <= i or (i, j) in exclude:
                continue
            distance = int(np.count_nonzero(hashes[i] != hashes[j]))
            if distance <= max_hash_distance:
                pairs.append((int(i), int(j), float(corr[i - start, j]), distance))
    return sorted(pairs)


def exact_duplicate_groups(hashes: list[str]) -> list[list[int]]:
    """Indices of files with the same content hash, one list per group of two or more."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            groups.setdefault(h, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def near_duplicate_pairs_between(thumbs_a: np.ndarray, thumbs_b: np.ndarray,
                                 min_correlation: float = MIN_CORRELATION,
                                 max_hash_distance: int = MAX_HASH_DISTANCE,
                                 block: int = 1024) -> list[tuple[int, int, float, int]]:
    """Near-duplicate pairs between two sets of thumbnails, by the rule of
    :func:`near_duplicate_pairs` (correlation and pHash distance).

    Args:
        thumbs_a: ``(N, 32, 32)``; thumbs_b: ``(M, 32, 32)`` (from :func:`thumbnail`).

    Returns:
        ``(i, j, correlation, hash_distance)`` with ``i`` indexing ``thumbs_a`` and ``j``
        indexing ``thumbs_b``, sorted by ``(j, i)``.
    """
    if len(thumbs_a) == 0 or len(thumbs_b) == 0:
        return []
    za, zb = _standardise(thumbs_a), _standardise(thumbs_b)
    ha = np.stack([phash(t) for t in thumbs_a])
    hb = np.stack([phash(t) for t in thumbs_b])
    pairs = []
    for start in range(0, len(za), block):
        corr = za[start:start + block] @ zb.T
        for i, j in zip(*np.nonzero(corr >= min_correlation)):
            distance = int(np.count_nonzero(ha[start + i] != hb[j]))
            if distance <= max_hash_distance:
                pairs.append((int(start + i), int(j), float(corr[i, j]), distance))
    return sorted(pairs, key=lambda p: (p[1], p[0]))
