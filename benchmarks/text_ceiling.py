"""The text ceiling of the demo: how well the frozen text tower's space alone separates
the findings, before any image is seen. A diagnostic of numbers, not of speed (seconds,
one thread); docs/LEARNING.md, section 5, reports it.

    python benchmarks/text_ceiling.py

For each pooling of all-MiniLM-L6-v2 (max, the paper's; mean, the one it was trained
with; cls) and each space the demo could train against:
- features: the pooled features h (384);
- centred: h minus the mean h of the training sentences;
- random head: g(h), the projection head as initialised (the demo before section 5);
- principal head: g(h) = P (h - mean), set by the demo's principal_text_head;
the 48 text queries of text_queries.json are compared with the IMPRESSION sentences of a
balanced synthetic set (synthetic_8x200, 200 reports per category, one sentence each):
- text->text P@10 / chance: the category precision of each query's 10 nearest sentences
  (chance 1/8), the least over the 8 categories;
- NC: the share of queries nearest to their own category's centroid;
- centroid cosine: mean and largest cosine between two categories' centroids;
- margin: a query's cosine with its own centroid minus the largest with another one,
  divided by the temperature 0.1 (logits), per category (mean over its 6 queries).
The mean and the principal directions are taken from the sentences of the demo's 4000
training reports (as the demo does), never from the queries or the balanced set.
"""

import numpy as np

import convirt
from convirt import datasets
from convirt.experiments.demo import (
    TEXT_QUERIES,
    _category_labels,
    principal_text_head,
    training_texts,
)
from convirt.reports import candidate_sentences
from convirt.text import minilm_path

TEMPERATURE = 0.1


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def separation(queries, query_category, sentences, category):
    """(P@10 per category, NC accuracy, centroid cosines (8, 8), margin per category)."""
    queries, sentences = _unit(queries), _unit(sentences)
    top = np.argsort(-(queries @ sentences.T), axis=1)[:, :10]
    hits = (category[top] == query_category[:, None]).mean(1)
    centroids = _unit(np.stack([sentences[category == c].mean(0) for c in range(8)]))
    to_centroids = queries @ centroids.T
    rows = np.arange(len(queries))
    nearest = (to_centroids.argmax(1) == query_category).mean()
    own = to_centroids[rows, query_category]
    to_centroids[rows, query_category] = -np.inf
    margin = (own - to_centroids.max(1)) / TEMPERATURE
    per_category = [query_category == c for c in range(8)]
    return (
        np.array([hits[m].mean() for m in per_category]),
        nearest,
        centroids @ centroids.T,
        np.array([margin[m].mean() for m in per_category]),
    )


def main():
    convirt.set_num_threads(1)
    names = list(TEXT_QUERIES)
    queries = [s for name in names for s in TEXT_QUERIES[name]]
    query_category = np.repeat(np.arange(8), [len(TEXT_QUERIES[n]) for n in names])
    train_texts = training_texts(
        datasets.synthetic_cxr(4000, size=32, seed=1).reports, "impression"
    )
    balanced = datasets.synthetic_8x200(200, size=32, seed=4)
    sentences = training_texts(balanced.reports, "impression")
    category = _category_labels(balanced.labels).argmax(1)
    sampled, counts = np.unique(
        [s for t in train_texts for s in candidate_sentences(t)], return_counts=True
    )
    print(
        f"{len(sampled)} distinct training sentences; columns of the margin: {', '.join(names)}"
    )
    print(
        "| pooling | space | text->text P@10 / chance, least | NC | centroid cosine, mean / max | margin (logits) per category |"
    )
    print("|---|---|---|---|---|---|")
    for pooling in ("max", "mean", "cls"):
        text = convirt.Encoder.from_pretrained(
            minilm_path(), proj_dim=128, seed=1, max_length=64, pooling=pooling
        )
        mean = counts @ text.encode(list(sampled), progress=False) / counts.sum()
        spaces = {
            "features": lambda x: text.encode(x, progress=False),
            "centred": lambda x: text.encode(x, progress=False) - mean,
            "random head": lambda x: text.embed(x, progress=False),
        }
        principal = convirt.Encoder.from_pretrained(
            minilm_path(), proj_dim=128, seed=1, max_length=64, pooling=pooling
        )
        principal_text_head(principal, train_texts)
        spaces["principal head"] = lambda x: principal.embed(x, progress=False)
        for space, embed in spaces.items():
            hits, nearest, cosines, margin = separation(
                embed(queries), query_category, embed(sentences), category
            )
            between = cosines[~np.eye(8, dtype=bool)]
            print(
                f"| {pooling} | {space} | {hits.min() * 8:.1f}x | {nearest:.2f} | "
                f"{between.mean():.2f} / {between.max():.2f} | "
                + " ".join(f"{m:.2f}" for m in margin)
                + " |"
            )


if __name__ == "__main__":
    main()
