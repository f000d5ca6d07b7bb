"""Zero-shot retrieval: cosine similarity, the top k, Precision@k per category; and
the queries of an 8x200-style protocol."""

from dataclasses import dataclass

import numpy as np

from .._optional import require
from .labels import _as_features, _binary_matrix, _check_length
from .results import _html_table, _text_table

__all__ = ["RetrievalResult", "retrieval", "retrieval_queries", "top_k"]


def _unit_rows(x, name):
    x = _as_features(x, name).astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        first = np.flatnonzero(norms == 0)[0]
        raise ValueError(
            f"{name} has all-zero rows (first: {first}); cosine similarity is "
            "undefined for them"
        )
    return x / norms[:, None]


def top_k(query_embeddings, candidate_embeddings, k=5, *, chunk_size=1024):
    """The k candidates most similar (cosine) to each query.

    query_embeddings (Q, d), candidate_embeddings (M, d): real arrays.
    Returns (indices int64 (Q, k), similarities float64 (Q, k)), best first; ties are
    broken by candidate index (stable). Queries are processed ``chunk_size`` at a time,
    so memory stays O(chunk_size * M).
    """
    q = _unit_rows(query_embeddings, "query_embeddings")
    c = _unit_rows(candidate_embeddings, "candidate_embeddings")
    if q.shape[1] != c.shape[1]:
        raise ValueError(
            f"query_embeddings have dimension {q.shape[1]} but "
            f"candidate_embeddings have {c.shape[1]}"
        )
    k = int(k)
    if not 1 <= k <= len(c):
        raise ValueError(f"k must be in [1, {len(c)}] (the number of candidates), got {k}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    indices = np.empty((len(q), k), dtype=np.int64)
    sims = np.empty((len(q), k))
    for start in range(0, len(q), chunk_size):
        s = q[start : start + chunk_size] @ c.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        indices[start : start + chunk_size] = order
        sims[start : start + chunk_size] = np.take_along_axis(s, order, axis=1)
    return indices, sims


@dataclass(eq=False)
class RetrievalResult:
    """What :func:`retrieval` returns: Precision@k per query category and their mean."""

    ks: tuple
    category_names: list  # categories that have queries, in the order of the table
    precision: np.ndarray  # (C, len(ks)) mean over each category's queries
    n_queries: np.ndarray  # (C,)
    per_query: np.ndarray  # (Q, len(ks)) Precision@k of every query
    top_indices: np.ndarray  # (Q, max(ks)) candidates retrieved, best first
    query_categories: np.ndarray  # (Q,) index into category_names

    @property
    def mean(self):
        """(len(ks),) mean over categories (each category weighs the same)."""
        return self.precision.mean(axis=0)

    @property
    def mean_over_queries(self):
        """(len(ks),) mean over all queries (equal to ``mean`` when every category has
        the same number of queries, as in CheXpert 8x200)."""
        return self.per_query.mean(axis=0)

    def _table(self):
        header = ["category", "queries"] + [f"P@{k}" for k in self.ks]
        rows = [
            [name, str(int(q))] + [f"{p:.3f}" for p in prec]
            for name, q, prec in zip(self.category_names, self.n_queries, self.precision)
        ]
        rows.append(
            ["mean", str(int(self.n_queries.sum()))] + [f"{p:.3f}" for p in self.mean]
        )
        return header, rows

    def __repr__(self):
        header, rows = self._table()
        title = "RetrievalResult(Precision@k, cosine similarity)"
        return _text_table(title, header, rows, left=(0,))

    def _repr_html_(self):
        header, rows = self._table()
        title = "<b>RetrievalResult</b>: Precision@k, cosine similarity"
        return _html_table(title, header, rows)

    def to_frame(self):
        """A pandas DataFrame: one row per category and a 'mean' row; columns
        'queries' and 'P@k' for each k."""
        pd = require("pandas", "RetrievalResult.to_frame()")

        frame = pd.DataFrame(
            self.precision,
            columns=[f"P@{k}" for k in self.ks],
            index=pd.Index(self.category_names, name="category"),
        )
        frame.insert(0, "queries", self.n_queries)
        frame.loc["mean"] = [int(self.n_queries.sum())] + list(self.mean)
        frame["queries"] = frame["queries"].astype(int)
        return frame


def retrieval(
    query_embeddings,
    query_categories,
    candidate_embeddings,
    candidate_labels,
    *,
    ks=(5, 10, 50),
    category_names=None,
):
    """Zero-shot retrieval: rank the candidates by cosine similarity to each query and
    report Precision@k, the share of the top k whose label for the query's category is
    positive.

    Image->image and text->image retrieval are this same function: pass image
    embeddings or text embeddings (from the text encoder's ``embed``) as queries.

    Parameters
    ----------
    query_embeddings : (Q, d) real array.
    query_categories : (Q,) the category of each query: a column index into
        ``candidate_labels``, or a name from ``category_names``.
    candidate_embeddings : (M, d) real array.
    candidate_labels : (M, C) labels; a candidate is a hit for category c when
        ``candidate_labels[:, c] == 1``. Anything else (0, -1 uncertain, NaN blank) is not
        a hit; map labels first for another policy (:func:`read_chexpert_8x200` does).
    ks : the k of Precision@k, each in [1, M].
    category_names : C names of the columns of ``candidate_labels``.

    Returns
    -------
    RetrievalResult, with the categories that have queries, in column order, and their
    mean (each category weighs the same).
    """
    labels = np.asarray(candidate_labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if (
        labels.ndim != 2
        or labels.dtype == object
        or not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool)
    ):
        raise ValueError(
            f"candidate_labels must be a numeric (M, C) array, got dtype "
            f"{labels.dtype} and shape {labels.shape}"
        )
    n_candidates = len(np.asarray(candidate_embeddings))
    _check_length(labels, n_candidates, "candidate_labels", "candidate_embeddings")
    n_categories = labels.shape[1]
    if category_names is not None:
        category_names = [str(c) for c in category_names]
        if len(category_names) != n_categories:
            raise ValueError(
                f"category_names has {len(category_names)} names for "
                f"{n_categories} columns of candidate_labels"
            )
    else:
        category_names = [str(c) for c in range(n_categories)]
    categories = _category_codes(query_categories, category_names, n_categories)
    _check_length(
        categories,
        len(np.asarray(query_embeddings)),
        "query_categories",
        "query_embeddings",
    )
    ks = tuple(sorted({int(k) for k in np.atleast_1d(ks).tolist()}))
    if not ks or ks[0] < 1 or ks[-1] > n_candidates:
        raise ValueError(
            f"every k must be in [1, {n_candidates}] (the number of candidates), got {ks}"
        )

    top, _ = top_k(query_embeddings, candidate_embeddings, ks[-1])
    positive = labels == 1
    hits = positive[top, categories[:, None]]  # (Q, max k)
    per_query = np.stack([hits[:, :k].mean(axis=1) for k in ks], axis=1)
    used = np.unique(categories)
    precision = np.stack([per_query[categories == c].mean(axis=0) for c in used])
    n_queries = np.array([np.count_nonzero(categories == c) for c in used])
    remap = np.full(n_categories, -1)
    remap[used] = np.arange(len(used))
    return RetrievalResult(
        ks=ks,
        category_names=[category_names[c] for c in used],
        precision=precision,
        n_queries=n_queries,
        per_query=per_query,
        top_indices=top,
        query_categories=remap[categories],
    )


def _category_codes(query_categories, names, n_categories):
    cats = np.asarray(query_categories)
    if cats.ndim != 1:
        raise ValueError(
            f"query_categories must be 1-D (one per query), got shape {cats.shape}"
        )
    if cats.dtype.kind in "US" or cats.dtype == object:
        lookup = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(c) for c in cats if str(c) not in lookup})
        if unknown:
            raise ValueError(
                f"query categories {unknown} are not among the category names {names}"
            )
        return np.array([lookup[str(c)] for c in cats], dtype=np.int64)
    if not np.issubdtype(cats.dtype, np.integer):
        raise TypeError(
            f"query_categories must be column indices (integers) or names, got "
            f"dtype {cats.dtype}"
        )
    bad = (cats < 0) | (cats >= n_categories)
    if bad.any():
        raise ValueError(
            f"query_categories must be in [0, {n_categories}) (columns of "
            f"candidate_labels), got {cats[bad][0]}"
        )
    return cats.astype(np.int64)


def retrieval_queries(labels, *, per_category=None, seed=0):
    """The queries of an 8x200-style protocol: the samples positive for exactly one
    category (column), that category being the query's. Returns (indices, categories),
    int64, sorted by category then index; ``per_category`` caps each category at that
    many (a random choice with ``seed``, as the 200 of CheXpert 8x200)."""
    y = _binary_matrix(labels, "labels")
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D 0/1 matrix, got shape {y.shape}")
    single = np.flatnonzero(y.sum(axis=1) == 1)
    categories = y[single].argmax(axis=1)
    rng = np.random.default_rng(seed)
    indices, cats = [], []
    for c in range(y.shape[1]):
        members = single[categories == c]
        if per_category is not None and len(members) > per_category:
            members = np.sort(rng.choice(members, per_category, replace=False))
        indices.append(members)
        cats.append(np.full(len(members), c))
    return np.concatenate(indices).astype(np.int64), np.concatenate(cats).astype(np.int64)
