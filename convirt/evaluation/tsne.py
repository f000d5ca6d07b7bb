"""t-SNE maps of image features, coloured by finding."""

import numpy as np

from .labels import _as_features, _binary_matrix

__all__ = ["tsne"]


def _finding_names(labels, label_names, priority):
    """One name per sample: its class, or for multi-label rows the first positive label
    in ``priority`` order ('No finding' when none is positive)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if label_names is None:
            return np.array([str(v) for v in labels], dtype=object)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                "with label_names, 1-D labels must be integer indices into them"
            )
        if labels.min() < 0 or labels.max() >= len(label_names):
            raise ValueError(
                f"labels must index label_names (0..{len(label_names) - 1}), "
                f"got values {labels.min()}..{labels.max()}"
            )
        return np.array([str(label_names[v]) for v in labels], dtype=object)
    if labels.ndim != 2:
        raise ValueError(
            f"labels must be 1-D classes or a 2-D 0/1 matrix, got shape {labels.shape}"
        )
    y = _binary_matrix(labels, "labels")
    if label_names is None:
        label_names = [f"label {j}" for j in range(y.shape[1])]
    if len(label_names) != y.shape[1]:
        raise ValueError(
            f"label_names has {len(label_names)} names for {y.shape[1]} label columns"
        )
    label_names = [str(n) for n in label_names]
    order = list(range(len(label_names)))
    if priority is not None:
        unknown = [p for p in priority if p not in label_names]
        if unknown:
            raise ValueError(f"priority names {unknown} are not in label_names")
        order = [label_names.index(p) for p in priority]
        order += [j for j in range(len(label_names)) if j not in order]
    out = np.full(len(y), "No finding", dtype=object)
    for j in reversed(order):  # the first in priority order wins
        out[y[:, j] == 1] = label_names[j]
    return out


def tsne(
    features,
    labels,
    label_names=None,
    *,
    perplexity=30,
    seed=0,
    ax=None,
    title=None,
    priority=None,
    pca_components=50,
    point_size=12,
    threads=None,
    return_coordinates=False,
):
    """A t-SNE map of image features, one colour per finding. Returns the figure.

    Parameters
    ----------
    features : real array (N, D), or a dict {title: (N, D) array} to draw several
        feature sets of the same samples side by side (e.g. ``{'random init': ...,
        'ConVIRT': ...}``), with shared colours.
    labels : (N,) class indices into ``label_names`` (or any class values when
        ``label_names`` is None), or an (N, K) 0/1 multi-label matrix: each sample is
        coloured by its first positive label in ``priority`` order (default: the column
        order), 'No finding' when it has none.
    label_names : names of the classes or columns.
    perplexity : t-SNE perplexity; must be below the number of samples.
    seed : random_state of TSNE (and of the PCA).
    ax : a matplotlib Axes (or a sequence, one per feature set); a new figure if None.
    title : the axes title (one feature set).
    pca_components : features wider than this are reduced by PCA first (the usual
        t-SNE preprocessing; None to skip).
    threads : limit the OpenMP and BLAS threads of PCA and t-SNE to this many (None:
        the libraries' defaults). On a few hundred points, 1 is as fast, and far faster
        on a busy machine, where OpenMP threads wait for each other.
    return_coordinates : also return the 2-D coordinates (an (N, 2) array, or a dict of
        them for several feature sets).
    """
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    sets = features if isinstance(features, dict) else {title: features}
    if not sets:
        raise ValueError("features is an empty dict")
    names = _finding_names(labels, label_names, priority)
    arrays = {}
    for key, x in sets.items():
        what = "features" if key is None else f"features[{key!r}]"
        arrays[key] = _as_features(x, what)
        if len(arrays[key]) != len(names):
            raise ValueError(
                f"{what} has {len(arrays[key])} rows but labels has {len(names)}: one "
                "label per row of features"
            )
    n = len(names)
    if not 0 < perplexity < n:
        raise ValueError(
            f"perplexity must be in (0, {n}) (below the number of samples), "
            f"got {perplexity}"
        )

    if ax is None:
        fig, axes = plt.subplots(
            1, len(arrays), figsize=(5.5 * len(arrays), 5), squeeze=False
        )
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != len(arrays):
            raise ValueError(
                f"{len(arrays)} feature sets need {len(arrays)} axes, got {len(axes)}"
            )
        fig = axes[0].figure

    # Colours in order of frequency; 'No finding' last, in grey.
    values, counts = np.unique(names, return_counts=True)
    ordered = [v for _, v in sorted(zip(-counts, values)) if v != "No finding"]
    if "No finding" in values:
        ordered.append("No finding")
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    colours = {
        v: cmap(i % cmap.N) for i, v in enumerate(o for o in ordered if o != "No finding")
    }
    colours["No finding"] = (0.6, 0.6, 0.6, 1.0)

    coordinates = {}
    for key, x in arrays.items():
        x = x.astype(np.float64)
        with threadpool_limits(threads):
            if pca_components is not None and x.shape[1] > pca_components:
                x = PCA(
                    n_components=min(pca_components, n), random_state=seed
                ).fit_transform(x)
            coordinates[key] = TSNE(
                n_components=2,
                perplexity=perplexity,
                random_state=seed,
                init="pca",
                learning_rate="auto",
            ).fit_transform(x)
    for axis, (key, xy) in zip(axes, coordinates.items()):
        for value in ordered:
            mask = names == value
            axis.scatter(
                xy[mask, 0],
                xy[mask, 1],
                s=point_size,
                color=colours[value],
                label=f"{value} ({np.count_nonzero(mask)})",
                alpha=0.8,
                edgecolors="none",
            )
        axis.set_xticks([])
        axis.set_yticks([])
        if key is not None:
            axis.set_title(str(key))
    axes[-1].legend(
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize="small",
        frameon=False,
        markerscale=1.5,
    )
    fig.tight_layout()
    if return_coordinates:
        single = not isinstance(features, dict)
        return fig, (coordinates[title] if single else coordinates)
    return fig
