"""The package's shape, read from its source with ast (scripts/import_graph.py's reader):
the library never imports the experiments or the command line, evaluation never
imports the Trainer, there is no import cycle, modules stay short, and nothing catches
an error by its message."""

import ast
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

spec = importlib.util.spec_from_file_location(
    "import_graph", os.path.join(ROOT, "scripts", "import_graph.py")
)
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)

GRAPH = import_graph.read_graph(ROOT)
LIBRARY = sorted(
    m for m in GRAPH if import_graph.layer_of(m) in import_graph.LIBRARY_LAYERS
)

MAX_LINES = 800


def imports_of(prefix):
    return {
        (m, t)
        for m, targets in GRAPH.items()
        for t in targets
        if t == prefix or t.startswith(prefix + ".")
    }


def test_the_graph_sees_the_package():
    assert {
        "convirt",
        "convirt.trainer",
        "convirt.evaluation.probe",
        "convirt.experiments.compare",
        "convirt.cli",
        "convirt.reports",
    } <= set(GRAPH)
    assert "convirt.trainer" in GRAPH["convirt.experiments.paper_table"]
    assert "convirt.reports" in GRAPH["convirt.trainer"]
    assert len(LIBRARY) > 20


@pytest.mark.parametrize("above", ["convirt.experiments", "convirt.cli"])
def test_library_never_imports_the_layers_above(above):
    upward = sorted((m, t) for m, t in imports_of(above) if m in LIBRARY)
    assert upward == []


def test_experiments_never_import_the_command_line():
    assert (
        sorted(
            (m, t)
            for m, t in imports_of("convirt.cli")
            if m.startswith("convirt.experiments")
        )
        == []
    )


def test_evaluation_never_imports_the_trainer():
    evaluation = [m for m in GRAPH if m.startswith("convirt.evaluation")]
    for module in evaluation:
        assert not GRAPH[module] & {"convirt.trainer", "convirt.trainer_config"}, module
        assert "convirt" not in GRAPH[module], module  # nor the package root


def test_library_never_imports_the_package_root():
    # `import convirt` from inside the library would tie every module to every other.
    assert sorted(m for m in LIBRARY if "convirt" in GRAPH[m]) == []


def test_arrows_run_one_way_between_layers():
    order = [layer for layer, _ in import_graph.LAYERS]
    upward = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        for t in targets
        if order.index(import_graph.layer_of(t)) < order.index(import_graph.layer_of(m))
    )
    assert upward == []


def test_no_import_cycles():
    assert import_graph.cycles(GRAPH) == []
    # The check finds one when there is one.
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [
        ["a", "b", "c"]
    ]


def test_no_module_over_800_lines():
    counts = import_graph.line_counts(ROOT)
    long = sorted(m for m, n in counts.items() if n > MAX_LINES)
    assert long == [], {m: counts[m] for m in long}


def test_nothing_catches_errors_by_their_message():
    # Callers catch convirt's typed errors (convirt.errors), never by searching text.
    pattern = re.compile(
        r"in\s+str\(\s*\w+\s*\)|str\(\s*(e|err|error|exc)\s*\)\s*\.\s*"
        r"(startswith|endswith|find|lower|count)|\.args\[0\]\s*(==|in)"
    )
    found = []
    for module, path in import_graph.module_files(ROOT).items():
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ExceptHandler):
                text = ast.get_source_segment(source, node) or ""
                found += [f"{module}: {m.group(0)}" for m in pattern.finditer(text)]
    assert found == []


def test_old_import_paths_keep_every_name():
    import convirt
    from convirt import data, datasets
    from convirt import eval as ev
    from convirt.datasets import indiana_reports, synthetic_cxr  # noqa: F401

    for name in ev.__all__ + [
        "DEFAULT_CS",
        "PAPER_ROWS",
        "_Task",
        "_Classifier",
        "_train_step",
    ]:
        assert getattr(ev, name) is not None, name
    for name in data.__all__ + [
        "IMAGE_EXTENSIONS",
        "impressions",
        "PREPARED_FORMAT",
        "_read_table",
        "_check_size",
    ]:
        assert getattr(data, name) is not None, name
    for name in (
        "LABEL_NAMES",
        "SyntheticCXR",
        "sample_findings",
        "write_report",
        "LOBES",
        "_render_chunk",
        "ArrayDataset",
        "MIMICCXRDataset",
    ):
        assert getattr(datasets, name) is not None, name
    assert convirt.text.split_sentences is convirt.reports.split_sentences
    assert convirt.trainer.mild_augment is convirt.mild_augment
    assert ev.compare is convirt.experiments.compare


def test_imports_for_type_checkers_only_are_no_edge():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nimport typing\n"
        "if TYPE_CHECKING:\n    from .encoder import Encoder\n"
        "if typing.TYPE_CHECKING:\n    import convirt.trainer\n"
        "from .errors import CheckpointError\n"
    )
    skipped = import_graph._typing_only_imports(tree)
    assert sorted(ast.unparse(node) for node in skipped) == [
        "from .encoder import Encoder",
        "import convirt.trainer",
    ]
