"""Where a demo run's text->image retrieval goes wrong: the text side, the image side,
or both (docs/LEARNING.md, section 7).

    PYTHONPATH=. python scripts/diagnose_retrieval.py RUN_DIR [--json OUT.json]

RUN_DIR is the output folder of `convirt demo`; its LAST checkpoint (the encoders the
demo evaluates) and its results.json (for the seed and settings) are read, and the
demo's own data are drawn again from the seed. Printed, in the projected (128-d,
normalised) space the loss compares:

(a) text side: each query of text_queries.json against the centroid of each category's
    IMPRESSION sentences (training reports with exactly that one category, each
    sentence as often as the reports hold it): the query's cosine with its own
    centroid, the nearest centroid and the margin over the nearest wrong one;
(b) image side, on the balanced retrieval set: the cosine between the categories'
    image centroids, image->image nearest-neighbour purity (share of an image's 10
    nearest other images in its category), each category's images classified by the
    nearest text centroid, and where each category's queries' top 10 images land.
"""

import argparse
import json
import os

import numpy as np

from convirt import datasets, load_run
from convirt.experiments.demo import TEXT_QUERIES, _category_labels, _views, training_texts
from convirt.reports import candidate_sentences

_SHORT = {
    "Atelectasis": "Atel",
    "Cardiomegaly": "Card",
    "Edema": "Edema",
    "Fracture": "Frac",
    "Pleural Effusion": "Eff",
    "Pneumonia": "Pna",
    "Pneumothorax": "Ptx",
    "No Finding": "NoF",
}


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def text_centroids(text, reports, labels, which, names):
    """(8, d) unit centroids of each category's sentences (single-category reports)."""
    hits = _category_labels(labels)
    single = hits.sum(1) == 1
    texts = training_texts(reports, which)
    centroids = []
    for c in range(len(names)):
        sentences = [
            s
            for k in np.flatnonzero(single & (hits[:, c] == 1))
            for s in candidate_sentences(texts[k])
        ]
        distinct, counts = np.unique(sentences, return_counts=True)
        emb = _unit(text.embed(list(distinct), progress=False))
        centroids.append(counts @ emb / counts.sum())
    return _unit(np.array(centroids))


def diagnose(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        settings = json.load(f)["config"]
    run = load_run(run_dir, "last")
    image, text = run.image_encoder.eval(), run.text_encoder.eval()
    seed, size = settings["seed"], settings["image_size"]
    train = datasets.synthetic_cxr(
        settings["train"], size=size, seed=seed + 1, difficulty=settings["difficulty"]
    )
    balanced = datasets.synthetic_8x200(
        settings["retrieval_per_category"],
        size=size,
        seed=seed + 4,
        difficulty=settings["difficulty"],
    )
    names = list(balanced.label_names)
    short = [_SHORT.get(n, n[:5]) for n in names]
    hits = _category_labels(balanced.labels)
    category = hits.argmax(1)
    out = {"run": run_dir, "seed": seed, "names": names}

    # (a) text side
    centroids = text_centroids(text, train.reports, train.labels, settings["text"], names)
    print(f"run {run_dir} (seed {seed})")
    print("\n(a) text: queries against the categories' sentence centroids (cosine)")
    print(f"{'query':60s} own   best   nearest  margin")
    queries = {}
    for c, name in enumerate(names):
        q = _unit(text.embed(TEXT_QUERIES[name], progress=False))
        cos = q @ centroids.T  # (queries, 8)
        rows = []
        for sentence, row in zip(TEXT_QUERIES[name], cos):
            wrong = np.delete(row, c)
            nearest = int(row.argmax())
            rows.append(
                {
                    "query": sentence,
                    "cosine": row.tolist(),
                    "nearest": names[nearest],
                    "margin": float(row[c] - wrong.max()),
                }
            )
            print(
                f"{sentence[:60]:60s} {row[c]:.2f}  {row.max():.2f}  "
                f"{short[nearest]:7s}  {row[c] - wrong.max():+.2f}"
            )
        queries[name] = {
            "rows": rows,
            "own_nearest": int(sum(r["nearest"] == name for r in rows)),
            "mean_margin": float(np.mean([r["margin"] for r in rows])),
        }
    print("\nper category: queries nearest their own centroid, mean margin (cosine)")
    for name in names:
        print(
            f"  {name:16s} {queries[name]['own_nearest']}/{len(TEXT_QUERIES[name])}"
            f"  {queries[name]['mean_margin']:+.3f}"
        )
    out["text"] = queries
    out["text_centroid_cosine"] = (centroids @ centroids.T).tolist()

    # (b) image side
    emb = _unit(image.embed(_views(balanced.images, size), progress=False))
    image_centroids = _unit(np.array([emb[category == c].mean(0) for c in range(8)]))
    pair = image_centroids @ image_centroids.T
    print("\n(b) image centroids: pairwise cosine")
    print("        " + " ".join(f"{s:>6s}" for s in short))
    for c in range(8):
        print(f"  {short[c]:6s}" + " ".join(f"{v:6.2f}" for v in pair[c]))
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argsort(-sim, axis=1)[:, :10]
    nn_share = np.zeros((8, 8))
    for c in range(8):
        nn_share[c] = np.bincount(
            category[neighbours[category == c]].ravel(), minlength=8
        ) / (10 * (category == c).sum())
    print("\nimage->image: share of each category's 10 nearest images by category")
    print("        " + " ".join(f"{s:>6s}" for s in short) + "   purity")
    for c in range(8):
        print(
            f"  {short[c]:6s}"
            + " ".join(f"{v:6.2f}" for v in nn_share[c])
            + f"   {nn_share[c, c]:.2f}"
        )
    zero_shot = np.argmax(emb @ centroids.T, axis=1)
    zs = np.zeros((8, 8))
    for c in range(8):
        zs[c] = np.bincount(zero_shot[category == c], minlength=8) / (category == c).sum()
    print("\nimages classified by the nearest text centroid (rows: true category)")
    print("        " + " ".join(f"{s:>6s}" for s in short))
    for c in range(8):
        print(f"  {short[c]:6s}" + " ".join(f"{v:6.2f}" for v in zs[c]))
    cross = image_centroids @ centroids.T
    print("\nimage centroid (rows) against text centroid (columns), cosine")
    print("        " + " ".join(f"{s:>6s}" for s in short))
    for c in range(8):
        print(f"  {short[c]:6s}" + " ".join(f"{v:6.2f}" for v in cross[c]))
    landing = np.zeros((8, 8))
    query_to_image_centroid = np.zeros((8, 8))
    for c, name in enumerate(names):
        q = _unit(text.embed(TEXT_QUERIES[name], progress=False))
        top = np.argsort(-(q @ emb.T), axis=1)[:, :10]
        landing[c] = np.bincount(category[top].ravel(), minlength=8) / top.size
        query_to_image_centroid[c] = (q @ image_centroids.T).mean(0)
    print("\nwhere each category's queries' top 10 images land (rows: query category)")
    print("        " + " ".join(f"{s:>6s}" for s in short))
    for c in range(8):
        print(f"  {short[c]:6s}" + " ".join(f"{v:6.2f}" for v in landing[c]))
    print("\nqueries' mean cosine with each category's image centroid")
    print("        " + " ".join(f"{s:>6s}" for s in short))
    for c in range(8):
        print(
            f"  {short[c]:6s}" + " ".join(f"{v:6.2f}" for v in query_to_image_centroid[c])
        )
    out.update(
        image_centroid_cosine=pair.tolist(),
        nearest_neighbour_share=nn_share.tolist(),
        zero_shot_by_text_centroid=zs.tolist(),
        image_vs_text_centroid=cross.tolist(),
        query_top10_landing=landing.tolist(),
        query_vs_image_centroid=query_to_image_centroid.tolist(),
    )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    out = diagnose(args.run_dir)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
