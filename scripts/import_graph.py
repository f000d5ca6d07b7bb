"""The import graph of the convirt package, read from its source with ``ast``, drawn into
docs/import_graph.png: library modules below, the experiments and the command line
above, every arrow from a module to one it imports.

    python scripts/import_graph.py [OUT.png]

Every import counts, at the top of a module or inside a function, except those under
``if TYPE_CHECKING:`` (read by type checkers only, never run). Modules are the
package's files (a package's ``__init__.py`` is the package). tests/test_layering.py
reads the same graph (``read_graph``) and asserts what this picture shows: arrows run
one way, and there is no cycle.
"""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "convirt"

# The layers, top first. A module belongs to the first layer whose prefix it has.
LAYERS = (
    ("command line", ("convirt.cli", "convirt.__main__")),
    ("experiments", ("convirt.experiments",)),
    # Kept names: the package root and the aliases of modules that were split.
    ("package and aliases", ("convirt.eval", "convirt.data")),
    ("evaluation", ("convirt.evaluation", "convirt.sklearn")),
    (
        "training",
        (
            "convirt.trainer",
            "convirt.trainer_config",
            "convirt.runs",
            "convirt.train_step",
            "convirt.callbacks",
            "convirt.loss_curves",
            "convirt.distributed",
        ),
    ),
    (
        "models",
        (
            "convirt.encoder",
            "convirt.checkpoint",
            "convirt.schedules",
            "convirt.export",
            "convirt.embeddings",
            "convirt.encoder_spec",
        ),
    ),
    (
        "data",
        (
            "convirt.datasets",
            "convirt.prepared",
            "convirt.loader",
            "convirt.synthetic",
            "convirt.reports",
            "convirt.text",
            "convirt.tables",
            "convirt.images",
            "convirt.augment",
        ),
    ),
    (
        "foundations",
        ("convirt._io", "convirt._optional", "convirt.errors", "convirt._core"),
    ),
)
LIBRARY_LAYERS = ("evaluation", "training", "models", "data", "foundations")


def module_files(root=ROOT):
    """{module name: path} of every .py file of the package."""
    found = {}
    base = os.path.join(root, PACKAGE)
    for directory, _, files in os.walk(base):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(module, node, modules, is_package):
    """The package modules an import statement of `module` names."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from a import b`: b is a module when there is one, else a name in a.
        targets = [
            f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
            for alias in node.names
        ]
    out = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != module:
            out.add(target)
    return out


def _typing_only_imports(tree):
    """The imports under ``if TYPE_CHECKING:``: read by type checkers, never run, so
    they are no edge (a module may name in its annotations a type it cannot import)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for statement in node.body:
                found |= {
                    n
                    for n in ast.walk(statement)
                    if isinstance(n, (ast.Import, ast.ImportFrom))
                }
    return found


def read_graph(root=ROOT):
    """{module: set of package modules it imports} (the C extension, convirt._core, is a
    module without a source file here: imports of it are kept as edges to it)."""
    files = module_files(root)
    modules = set(files) | {f"{PACKAGE}._core"}
    graph = {name: set() for name in modules}
    for name, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        typing_only = _typing_only_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in typing_only:
                graph[name] |= _resolve(name, node, modules, is_package)
    return graph


def line_counts(root=ROOT):
    counts = {}
    for name, path in module_files(root).items():
        with open(path, encoding="utf-8") as f:
            counts[name] = sum(1 for _ in f)
    return counts


def layer_of(module):
    if module == PACKAGE:
        return "package and aliases"
    for layer, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    raise ValueError(f"{module} is in no layer: add it to scripts/import_graph.py LAYERS")


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def draw(graph, counts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    names = [layer for layer, _ in LAYERS]
    rows = {layer: sorted(m for m in graph if layer_of(m) == layer) for layer in names}
    rows = {layer: members for layer, members in rows.items() if members}
    width = max(len(members) for members in rows.values())
    # Fewer crossings: order each layer by the mean place of the modules it imports or
    # is imported by (a few sweeps of the barycentre heuristic).
    neighbours = {m: set(graph[m]) for m in graph}
    for m, targets in graph.items():
        for t in targets:
            neighbours[t].add(m)
    for _ in range(6):
        place = {
            m: (k + 0.5) / len(members)
            for members in rows.values()
            for k, m in enumerate(members)
        }
        for layer, members in rows.items():
            rows[layer] = sorted(
                members,
                key=lambda m: (
                    sum(place[n] for n in neighbours[m]) / len(neighbours[m])
                    if neighbours[m]
                    else place[m],
                    m,
                ),
            )
    fig, ax = plt.subplots(figsize=(max(14, 1.55 * width), 1.6 * len(rows) + 1.5))
    position = {}
    for level, (layer, members) in enumerate(reversed(list(rows.items()))):
        for k, module in enumerate(members):
            x = (k + 0.5) * width / len(members)
            position[module] = (x, level)
        ax.text(
            -0.3,
            level,
            layer,
            ha="right",
            va="center",
            fontsize=9,
            style="italic",
            color="0.35",
        )
    library_top = max(
        level
        for module, (_, level) in position.items()
        if layer_of(module) in LIBRARY_LAYERS
    )
    ax.axhline(library_top + 0.5, color="0.5", lw=1, ls="--")
    ax.text(
        width,
        library_top + 0.5,
        "library below / application above  ",
        ha="right",
        va="bottom",
        fontsize=8,
        color="0.4",
    )
    for source, targets in graph.items():
        for target in targets:
            (x0, y0), (x1, y1) = position[source], position[target]
            upward = y1 > y0
            same = y0 == y1
            arrow = FancyArrowPatch(
                (x0, y0 - 0.18),
                (x1, y1 + (-0.18 if same else 0.18)),
                arrowstyle="-|>",
                mutation_scale=7,
                lw=0.5,
                alpha=0.3,
                color="tab:red" if upward else "0.2",
                connectionstyle="arc3,rad=0.25" if same else None,
            )
            ax.add_patch(arrow)
    for module, (x, y) in position.items():
        label = module.removeprefix(PACKAGE + ".") if module != PACKAGE else PACKAGE
        lines = counts.get(module)
        text = f"{label}\n{lines}" if lines else label
        colour = {
            "command line": "#f4cccc",
            "experiments": "#fce5cd",
            "package and aliases": "#eeeeee",
        }.get(layer_of(module), "#d9ead3")
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=7.5,
            bbox={"boxstyle": "round,pad=0.3", "fc": colour, "ec": "0.4", "lw": 0.6},
        )
    ax.set_xlim(-1.8, width + 0.2)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axis("off")
    ax.set_title(
        "convirt's import graph (module, lines): every arrow points at a module "
        "the source imports; none points up",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else os.path.join(ROOT, "docs", "import_graph.png")
    graph = read_graph()
    order = [layer for layer, _ in LAYERS]
    upward = sorted(
        (s, t)
        for s, targets in graph.items()
        for t in targets
        if order.index(layer_of(t)) < order.index(layer_of(s))
    )
    found = cycles(graph)
    draw(graph, line_counts(), out)
    print(
        f"wrote {out}: {len(graph)} modules, "
        f"{sum(len(t) for t in graph.values())} imports, {len(upward)} upward, "
        f"{len(found)} cycles"
    )
    for source, target in upward:
        print(f"  upward: {source} -> {target}")
    for component in found:
        print(f"  cycle: {' -> '.join(component)}")
    return 1 if upward or found else 0


if __name__ == "__main__":
    sys.exit(main())
