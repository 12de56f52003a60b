"""Deduplication across the whole corpus: exact documents, exact lines, and near duplicates.

Near duplicates use MinHash with LSH (Broder 1997; Leskovec et al., Mining of Massive
Datasets, ch. 3):

1. A document is the set of its word n-grams ("shingles"), each hashed to 32 bits.
2. Its signature is, for each of P random hash functions, the smallest hash over its
   shingles. Two documents agree on one signature entry with probability equal to
   the Jaccard similarity of their shingle sets, so the share of agreeing entries estimates it.
3. LSH: the P entries are cut into B bands of R rows; documents whose band matches exactly
   land in the same bucket and become a candidate pair (probability 1 - (1 - J^R)^B: near 1
   for similar pairs, near 0 for different ones), so we never compare every pair.
4. Candidates whose estimated similarity reaches the threshold are merged (union-find); each
   cluster keeps its first document in input order, so the result never depends on workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

MAX_REPRESENTATIVES = 8  # per LSH bucket: bounds the work on a bucket of many unlike documents


def exact_key(text: str) -> bytes:
    """Documents equal up to case and whitespace get the same key."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()


def line_key(line: str) -> bytes:
    return hashlib.blake2b(line.strip().encode(), digest_size=8).digest()


def dedup_lines(text: str, seen: set[bytes], min_chars: int) -> tuple[str, int]:
    """`text` without the lines (of at least `min_chars`) an earlier document already had;
    this document's lines join `seen`. Returns the text and how many lines went."""
    kept, removed, mine = [], 0, []
    for line in text.split("\n"):
        if len(line.strip()) >= min_chars:
            key = line_key(line)
            if key in seen:
                removed += 1
                continue
            mine.append(key)
        kept.append(line)
    seen.update(mine)
    return "\n".join(kept).strip(), removed


class MinHasher:
    """Signatures of `permutations` 32-bit MinHash values over word `ngram` shingles.

    The hashing runs in rensa (Rust): measured here at 7,300 docs/s of 500 words against
    1,100 for datasketch and 550 for a numpy version of our own (docs/LOG.md).
    """

    def __init__(self, permutations: int = 128, ngram: int = 5, seed: int = 1337):
        self.permutations, self.ngram, self.seed = permutations, ngram, seed

    def shingles(self, text: str) -> list[str]:
        words = text.lower().split()
        n = min(self.ngram, len(words))
        if n <= 1:
            return words or [""]
        return list(map(" ".join, zip(*(words[i:] for i in range(n)), strict=False)))

    def signature(self, text: str) -> np.ndarray:
        from rensa import RMinHash

        m = RMinHash(num_perm=self.permutations, seed=self.seed)
        m.update(self.shingles(text))
        return np.asarray(m.digest(), dtype=np.uint32)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:  # the smaller index is the root: the first document represents its cluster
            self.parent[max(a, b)] = min(a, b)


def near_duplicate_clusters(
    signatures: Iterable[np.ndarray], bands: int, threshold: float
) -> tuple[list[int], dict[int, int]]:
    """For documents in input order: the index of the document each one duplicates (itself
    when it is kept), and the size of every cluster of more than one, by its first member."""
    sigs = np.stack(list(signatures))
    n, P = sigs.shape
    rows = P // bands
    uf = UnionFind(n)
    for band in range(bands):
        # a bucket keeps one representative per cluster seen in it (a few at most)
        buckets: dict[bytes, list[int]] = {}
        keys = np.ascontiguousarray(sigs[:, band * rows : (band + 1) * rows])
        for i in range(n):
            reps = buckets.setdefault(keys[i].tobytes(), [])
            root = uf.find(i)
            for rep in reps:
                if uf.find(rep) == root:
                    break
                if np.count_nonzero(sigs[rep] == sigs[i]) >= threshold * P:
                    uf.union(rep, i)
                    break
            else:
                if len(reps) < MAX_REPRESENTATIVES:
                    reps.append(i)
    roots = [uf.find(i) for i in range(n)]
    sizes: dict[int, int] = {}
    for r in roots:
        sizes[r] = sizes.get(r, 0) + 1
    return roots, {r: k for r, k in sizes.items() if k > 1}
