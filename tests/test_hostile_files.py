"""Hostile files (issue 10, the Python side): every file convirt reads - images, CSV
tables, prepared caches, checkpoints, metadata, configs, vocabularies - can be a FIFO, a
lie or garbage. Each case below is a regression test with its reproducer: no hang, no
crash, no silent wrong answer, and an error of the package's own type that names the
file and the field and says what was expected. A failed load changes nothing.

The categories follow the issue: 1 hangs, 2 data loss, 3 accepted nonsense, 4 poor
errors, 5 training failures. What held up before (kill -9 during training, atomic saves)
is tested in test_trainer.py."""

import csv
import gzip
import json
import math
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save

import convirt
from convirt import cli, data
from convirt.checkpoint import CheckpointDir, CheckpointError
from convirt.data import (
    CSVDataset,
    DataFileError,
    MIMICCXRDataset,
    PreparedDataset,
    prepare,
)
from convirt.trainer import Trainer, TrainingDiverged

sys.path.insert(0, os.path.dirname(__file__))
import tiny

# The directory holding this convirt, first on a child interpreter's path.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(convirt.__file__)))


def run_python(code, timeout=30):
    """Run code in a fresh interpreter (with this convirt and tests/ on its path) and
    return (exit code, stdout, stderr). A child that blocks (a hang) fails the test after
    timeout seconds instead of hanging it; its address space is capped at 4 GiB so that
    a huge allocation fails fast instead of taking the machine's memory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [SOURCE_ROOT, os.path.dirname(__file__)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    try:
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child blocked for {timeout} s (a hang)")
    return child.returncode, child.stdout, child.stderr


def write_png(path, size=(24, 32), value=100):
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return str(path)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


# ======================================================================================
# 1. Hangs: files that are not regular files (a FIFO blocks the first read forever)
# ======================================================================================


def test_decode_image_refuses_a_fifo(tmp_path):
    # os.mkfifo("scan.png"); decode_image("scan.png") blocked forever in open().
    os.mkfifo(tmp_path / "scan.png")
    code, out, err = run_python(f"""
        from convirt.data import decode_image, ImageDecodeError
        try:
            decode_image({str(tmp_path / "scan.png")!r})
        except ImageDecodeError as error:
            print("refused:", error)
    """)
    assert code == 0, err
    assert "refused:" in out and "scan.png" in out and "not a regular file" in out


def test_prepare_skips_a_fifo_listed_in_a_csv(tmp_path):
    # A CSV row naming a FIFO: CSVDataset(...) then prepare(...) hung on that row.
    write_png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    write_csv(
        tmp_path / "pairs.csv",
        ["image", "report"],
        [["a.png", "Normal."], ["b.png", "Effusion."]],
    )
    code, out, err = run_python(f"""
        import warnings
        from convirt.data import CSVDataset, prepare
        warnings.simplefilter("ignore")
        summary = prepare(CSVDataset({str(tmp_path / "pairs.csv")!r}),
                          {str(tmp_path / "cache")!r}, size=8, progress=False)
        print(summary.prepared, summary.corrupt, summary.failures[0][2])
    """)
    assert code == 0, err
    assert out.startswith("1 1 ") and "b.png" in out and "not a regular file" in out


def test_encoder_checkpoint_that_is_a_fifo_is_refused(tmp_path):
    # Encoder.from_checkpoint(fifo) blocked in safetensors' open().
    os.mkfifo(tmp_path / "enc.safetensors")
    code, out, err = run_python(f"""
        import convirt
        from convirt.checkpoint import CheckpointError
        try:
            convirt.Encoder.from_checkpoint({str(tmp_path / "enc.safetensors")!r})
        except CheckpointError as error:
            print("refused:", error)
    """)
    assert code == 0, err
    assert "refused:" in out and "enc.safetensors" in out and "not a regular file" in out


def test_checkpoint_pointer_that_is_a_fifo_is_refused(tmp_path):
    # A LAST that is a FIFO: CheckpointDir(path).load_state() (Trainer.resume) hung.
    (tmp_path / "ckpt").mkdir()
    os.mkfifo(tmp_path / "ckpt" / "LAST")
    code, out, err = run_python(f"""
        from convirt.checkpoint import CheckpointDir, CheckpointError
        try:
            CheckpointDir({str(tmp_path / "ckpt")!r}).load_state()
        except CheckpointError as error:
            print("refused:", error)
    """)
    assert code == 0, err
    assert "refused:" in out and "LAST" in out and "not a regular file" in out


def test_prepared_index_that_is_a_fifo_is_refused(tmp_path):
    # PreparedDataset(cache) with cache/index.json a FIFO hung.
    (tmp_path / "cache").mkdir()
    os.mkfifo(tmp_path / "cache" / "index.json")
    code, out, err = run_python(f"""
        from convirt.data import PreparedDataset, DataFileError
        try:
            PreparedDataset({str(tmp_path / "cache")!r})
        except DataFileError as error:
            print("refused:", error)
    """)
    assert code == 0, err
    assert "refused:" in out and "index.json" in out and "not a regular file" in out


def test_pretrain_config_that_is_a_fifo_is_one_line(tmp_path):
    # convirt pretrain cache out --config fifo.json hung reading the settings.
    os.mkfifo(tmp_path / "settings.json")
    code, _, err = run_python(f"""
        import sys
        from convirt import cli
        sys.exit(cli.main(["pretrain", "cache", {str(tmp_path / "run")!r}, "--config",
                           {str(tmp_path / "settings.json")!r}]))
    """)
    assert code == 1, err
    assert "settings.json" in err and "not a regular file" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["features.csv", "features.parquet", "features.npy"])
def test_load_embeddings_refuses_a_fifo(tmp_path, name):
    # load_embeddings("features.csv") with the file a FIFO hung in open().
    os.mkfifo(tmp_path / name)
    code, out, err = run_python(f"""
        from convirt.embeddings import load_embeddings
        from convirt.errors import DataFileError
        try:
            load_embeddings({str(tmp_path / name)!r})
        except DataFileError as error:
            print("refused:", error)
    """)
    assert code == 0, err
    assert "refused:" in out and name in out and "not a regular file" in out


def test_zero_shot_prompts_that_are_a_fifo_are_one_line(tmp_path):
    # convirt zero-shot --prompts fifo.json hung reading the prompts.
    os.mkfifo(tmp_path / "prompts.json")
    code, _, err = run_python(f"""
        import sys
        from convirt import cli
        sys.exit(cli.main(["zero-shot", "--run", "run", "--prompts",
                           {str(tmp_path / "prompts.json")!r}, "cache"]))
    """)
    assert code == 1, err
    assert "prompts.json" in err and "not a regular file" in err
    assert len(err.strip().splitlines()) == 1


# ======================================================================================
# 2. Data loss
# ======================================================================================


def test_csv_unbalanced_quote_running_to_the_end_is_refused_with_its_line(tmp_path):
    # 'b.png,"Unbalanced report.' opened a quote that never closed: the rows after it
    # were silently merged into b's report (4 rows became 2).
    path = tmp_path / "pairs.csv"
    path.write_text(
        'image,report\na.png,Normal.\nb.png,"Unbalanced report.\n'
        "c.png,Third.\nd.png,Fourth.\n"
    )
    with pytest.raises(DataFileError, match=r"pairs\.csv.* line 3.*quote"):
        CSVDataset(path)


def test_csv_unbalanced_quote_closed_by_a_later_row_is_refused(tmp_path):
    # The stray quote of row 3 paired with the opening quote of row 4: rows 3 and 4
    # became one report and row 4's text ("Third, quoted.") was lost.
    path = tmp_path / "pairs.csv"
    path.write_text(
        'image,report\na.png,Normal.\nb.png,"Unbalanced report.\n'
        'c.png,"Third, quoted."\nd.png,Fourth.\n'
    )
    with pytest.raises(DataFileError, match=r"pairs\.csv.* line 3.*quote"):
        CSVDataset(path)


def test_csv_unquoted_comma_in_a_report_is_refused(tmp_path):
    # 'a.png,Heart normal, no effusion.' under the header 'image,report' kept only
    # "Heart normal": the text after the comma was dropped without a word.
    path = tmp_path / "pairs.csv"
    path.write_text("image,report\na.png,Heart normal, no effusion.\n")
    with pytest.raises(DataFileError, match=r"pairs\.csv.* line 2.*3 fields.*2 columns"):
        CSVDataset(path)


def test_csv_trailing_empty_fields_and_multiline_quotes_still_read(tmp_path):
    # Not a failure before: the checks above must not refuse well-formed tables.
    path = tmp_path / "pairs.csv"
    path.write_text('image,report\na.png,"Line one.\nLine two, quoted.",\nb.png,Two.\n')
    dataset = CSVDataset(path)
    assert dataset.reports == ["Line one.\nLine two, quoted.", "Two."]


def saved_checkpoint_dir(tmp_path):
    images, reports = tiny.pairs(8, 32)
    image, text = tiny.towers(str(tmp_path / "vocab"))
    trainer = Trainer(
        image, text, image_size=32, progress=False, checkpoint_dir=tmp_path / "ckpt"
    )
    trainer.fit((images, reports), epochs=1, batch_size=4)
    return trainer


def test_pruning_keeps_a_users_folder_that_starts_with_step(tmp_path):
    # A user's ckpt/step-by-step-notes/ was deleted at the first save: pruning removed
    # every entry whose name started with "step-".
    notes = tmp_path / "ckpt" / "step-by-step-notes"
    notes.mkdir(parents=True)
    (notes / "todo.txt").write_text("keep me")
    (tmp_path / "ckpt" / "step-00000001.bak").mkdir()
    trainer = saved_checkpoint_dir(tmp_path)
    trainer.save_checkpoint()
    assert (notes / "todo.txt").read_text() == "keep me"
    assert (tmp_path / "ckpt" / "step-00000001.bak").is_dir()


def test_pruning_keeps_another_live_process_staging_folder(tmp_path):
    # ckpt/.staging-step-00000005-<pid of a live process> (a save in progress in
    # another process) was deleted by this process's next save.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staging = tmp_path / "ckpt" / f".staging-step-00000005-{live.pid}"
        staging.mkdir(parents=True)
        (staging / "trainer.json").write_text("{}")
        other = tmp_path / "ckpt" / ".staging-notes"
        other.mkdir()
        saved_checkpoint_dir(tmp_path)
        assert (staging / "trainer.json").exists() and other.is_dir()
    finally:
        live.kill()
        live.wait()


def test_pruning_still_removes_what_a_killed_process_left(tmp_path):
    # Not a failure before: a staging folder of a process that no longer exists (killed
    # mid-save) and a checkpoint no pointer names are still removed.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging = tmp_path / "ckpt" / f".staging-step-00000009-{dead.pid}"
    staging.mkdir(parents=True)
    (staging / "trainer.json").write_text("{}")
    orphan = tmp_path / "ckpt" / "step-00000007"
    orphan.mkdir()
    (orphan / "trainer.json").write_text("{}")
    saved_checkpoint_dir(tmp_path)
    assert not staging.exists() and not orphan.exists()


def test_prepare_overwrite_leaves_an_open_cache_readable(tmp_path):
    # prepare(..., overwrite=True) truncated images.u8 in place: a PreparedDataset that
    # had it mapped died of SIGBUS (a smaller cache) or read the new images beside its
    # old reports (the same size). Now the new files replace the old ones by rename.
    code, out, err = run_python(f"""
        import numpy as np
        from convirt.data import ArrayDataset, PreparedDataset, prepare
        old = np.full((4, 64, 64), 10, np.uint8)  # a page per image
        new = np.full((2, 64, 64), 200, np.uint8)
        cache = {str(tmp_path / "cache")!r}
        prepare(ArrayDataset(old, list("abcd")), cache, size=64, progress=False)
        before = PreparedDataset(cache)
        prepare(ArrayDataset(new, list("xy")), cache, size=64, progress=False,
                overwrite=True)
        after = PreparedDataset(cache)
        print(int(before.images[3].max()), "".join(before.reports))
        print(len(after), int(after.images.min()), "".join(after.reports))
    """)
    assert code == 0, err
    assert out.split("\n")[:2] == ["10 abcd", "2 200 xy"]
    assert sorted(os.listdir(tmp_path / "cache")) == [
        ".prepare.lock",
        "images.u8",
        "index.json",
        "reports.jsonl",
    ]


def test_prepare_killed_mid_run_leaves_nothing_behind_the_next_run(tmp_path):
    # prepare stages a fresh cache under .tmp-images.u8-XXXX and .tmp-reports.jsonl-XXXX
    # until its first commit; killed before it (kill -9, the OOM killer), those stayed
    # in the folder for good, as large as the images prepared so far. The next run now
    # removes them (it holds the folder's lock, so they can be nobody else's) and warns.
    cache = tmp_path / "cache"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            import numpy as np
            from convirt.data import ArrayDataset, prepare
            class Stalls(ArrayDataset):
                def _load(self, index, size):
                    if index == 3:
                        print("staged", flush=True)
                        time.sleep(120)
                    return super()._load(index, size)
            images = np.full((6, 64, 64), 7, np.uint8)
            prepare(Stalls(images, list("abcdef")), {str(cache)!r}, size=64,
                    progress=False, workers=1, checkpoint_seconds=3600)
        """),
        ],
        env={**os.environ, "PYTHONPATH": SOURCE_ROOT},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "staged\n"
        staged = [p for p in os.listdir(cache) if p.startswith(".tmp-")]
        assert len(staged) == 2 and not (cache / "index.json").exists()
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup
        child.wait()
        child.stdout.close()
    images = np.full((6, 64, 64), 9, np.uint8)
    with pytest.warns(UserWarning, match="removed 2 temporary files"):
        summary = prepare(
            data.ArrayDataset(images, list("uvwxyz")), cache, size=64, progress=False
        )
    assert summary.prepared == 6
    assert sorted(os.listdir(cache)) == [
        ".prepare.lock",
        "images.u8",
        "index.json",
        "reports.jsonl",
    ]
    assert PreparedDataset(cache).reports == list("uvwxyz")


# ======================================================================================
# 3. Accepted nonsense
# ======================================================================================


def test_huge_image_size_is_refused_before_allocating(tmp_path):
    # decode_image(path, size=10**6) allocated until the OOM killer came; prepare(...,
    # size=10**5) was a bare MemoryError.
    code, out, err = run_python(f"""
        import numpy as np
        from convirt.data import ArrayDataset, decode_image, prepare
        from PIL import Image
        Image.fromarray(np.zeros((4, 4), np.uint8)).save({str(tmp_path / "a.png")!r})
        for call in (
            lambda: decode_image({str(tmp_path / "a.png")!r}, size=10**6),
            lambda: prepare(ArrayDataset(np.zeros((1, 4, 4), np.uint8), ["a"]),
                            {str(tmp_path / "c")!r}, size=10**5, progress=False),
        ):
            try:
                call()
            except ValueError as error:
                print("refused:", error)
    """)
    assert code == 0, err
    assert out.count("refused: size must be a positive integer of at most 8192") == 2


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """(tensors, metadata) of a small ResNet-18 encoder checkpoint."""
    path = str(tmp_path_factory.mktemp("image") / "image.safetensors")
    convirt.Encoder.resnet18(proj_dim=8, proj_hidden=16, seed=3).save(path)
    return load_file(path), _metadata(path)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """(tensors, metadata) of a small BERT encoder checkpoint with a tokenizer."""
    directory = tmp_path_factory.mktemp("text")
    _, text = tiny.towers(str(directory / "vocab"))
    path = str(directory / "text.safetensors")
    text.save(path)
    return load_file(path), _metadata(path)


def _metadata(path):
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return dict(f.metadata())


def rewrite(path, tensors, metadata, **changes):
    """Write tensors with metadata whose encoder spec has `changes` applied ('config.X'
    changes the config; the value DELETE removes the key)."""
    spec = json.loads(metadata["convirt_encoder"])
    for key, value in changes.items():
        target, name = (
            (spec["config"], key[7:]) if key.startswith("config_") else (spec, key)
        )
        if value is DELETE:
            del target[name]
        else:
            target[name] = value
    with open(path, "wb") as f:
        f.write(save(tensors, metadata=dict(metadata, convirt_encoder=json.dumps(spec))))
    return str(path)


DELETE = object()


def test_int32_tensors_in_an_encoder_checkpoint_are_refused(tmp_path, image_file):
    # The same bytes relabelled int32 (save({k: v.view(np.int32)})): from_checkpoint
    # converted the integers to float32 and returned an encoder with garbage weights.
    tensors, metadata = image_file
    relabelled = {k: v.view(np.int32) for k, v in tensors.items()}
    path = tmp_path / "int.safetensors"
    path.write_bytes(save(relabelled, metadata=metadata))
    with pytest.raises(
        CheckpointError, match=r"int\.safetensors.*'[\w.]+'.*int32.*float32"
    ):
        convirt.Encoder.from_checkpoint(path)


def test_load_refuses_integer_tensors(tmp_path, image_file):
    # encoder.load(file with int32 tensors) copied the integers in as floats.
    tensors, _ = image_file
    path = tmp_path / "int.safetensors"
    path.write_bytes(save({k: v.view(np.int32) for k, v in tensors.items()}))
    encoder = convirt.Encoder.resnet18(proj_dim=8, proj_hidden=16)
    before = encoder.flat_parameters.copy()
    with pytest.raises(ValueError, match=r"int\.safetensors.*'?[\w.]+'?.*int32"):
        encoder.load(path)
    np.testing.assert_array_equal(encoder.flat_parameters, before)


# (metadata change, the field the error must name). Each was accepted, or refused with
# an error that named neither the file nor the field.
IMAGE_METADATA_CASES = [
    ({"kind": "bert"}, "kind"),  # KeyError 'vocab_size'
    ({"kind": 7}, "kind"),  # TypeError from the constructor
    ({"config_depth": 34}, "depth"),  # a list of 50 missing tensors
    ({"config_depth": True}, "depth"),  # "depth must be 18, 34 or 50, got 1"
    ({"config_depth": "18"}, "depth"),
    ({"config_in_channels": 3}, "in_channels"),  # a shape error about conv1
    ({"config_in_channels": True}, "in_channels"),  # accepted as 1
    ({"config_in_channels": 0}, "in_channels"),
    ({"config_stride": 2}, "stride"),  # an unknown key, accepted
    ({"normalization": [[0.5], [0.0]]}, "normalization"),  # "got %g"
    ({"normalization": [[0.5, 0.2], [0.1, 0.1]]}, "normalization"),
    ({"normalization": [[float("nan")], [0.2]]}, "normalization"),
    ({"normalization": "grey"}, "normalization"),
    ({"tokenizer": "{}"}, "tokenizer"),  # a tokenizer on an image encoder
    ({"max_length": -5}, "max_length"),  # accepted
    ({"max_length": "128"}, "max_length"),  # accepted
    ({"proj_dim": True}, "proj_dim"),  # a shape error
    ({"proj_dim": 8.0}, "proj_dim"),  # "'float' object cannot be ..."
    ({"proj_dim": 9}, "proj_dim"),  # a shape error
    ({"proj_hidden": -1}, "proj_hidden"),
    ({"seed": "x"}, "seed"),  # "argument 5 must be int"
    ({"seed": 1.5}, "seed"),
    ({"unexpected": 1}, "unexpected"),  # ignored
    ({"kind": DELETE}, "kind"),  # KeyError: 'kind'
    ({"config": [18, 1]}, "config"),
]


@pytest.mark.parametrize(
    "changes, field",
    IMAGE_METADATA_CASES,
    ids=[f"{f}={next(iter(c.values()))!r}"[:40] for c, f in IMAGE_METADATA_CASES],
)
def test_image_metadata_field_is_checked(tmp_path, image_file, changes, field):
    path = rewrite(tmp_path / "bad.safetensors", *image_file, **changes)
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors.*'?{field}'?"):
        convirt.Encoder.from_checkpoint(path)


TEXT_METADATA_CASES = [
    ({"kind": "resnet"}, "kind"),
    ({"config_layer_norm_eps": math.inf}, "layer_norm_eps"),  # accepted
    ({"config_layer_norm_eps": 0}, "layer_norm_eps"),
    ({"config_layer_norm_eps": 10**400}, "layer_norm_eps"),  # OverflowError
    ({"config_vocab_size": 47}, "vocab_size"),  # a shape error
    ({"config_num_hidden_layers": 3}, "num_hidden_layers"),  # a missing-tensor list
    ({"config_num_attention_heads": 5}, "num_attention_heads"),
    ({"config_pooling": 7}, "pooling"),
    ({"config_freeze_layers": 3}, "freeze_layers"),
    ({"config_max_position_embeddings": DELETE}, "max_position_embeddings"),
    ({"tokenizer": "not json"}, "tokenizer"),  # no file, no field
    ({"tokenizer": 5}, "tokenizer"),
    ({"max_length": 1}, "max_length"),
    ({"normalization": [[0.5], [0.2]]}, "normalization"),
]


@pytest.mark.parametrize(
    "changes, field",
    TEXT_METADATA_CASES,
    ids=[f"{f}={next(iter(c.values()))!r}"[:40] for c, f in TEXT_METADATA_CASES],
)
def test_text_metadata_field_is_checked(tmp_path, text_file, changes, field):
    path = rewrite(tmp_path / "bad.safetensors", *text_file, **changes)
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors.*'?{field}'?"):
        convirt.Encoder.from_checkpoint(path)


def test_good_metadata_still_loads(tmp_path, image_file, text_file):
    # Not a failure before: the checks accept what convirt writes.
    for name, (tensors, metadata) in (("image", image_file), ("text", text_file)):
        path = rewrite(tmp_path / f"{name}.safetensors", tensors, metadata)
        encoder = convirt.Encoder.from_checkpoint(path)
        np.testing.assert_array_equal(
            encoder.state_dict()["projection.2.weight"], tensors["projection.2.weight"]
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"proj_hidden": 2**62},  # a segmentation fault in the core
        {"proj_dim": 2**40},  # MemoryError
        {"config_in_channels": 2**31},
    ],
    ids=["proj_hidden=2**62", "proj_dim=2**40", "in_channels=2**31"],
)
def test_huge_image_metadata_sizes_are_refused_before_building(
    tmp_path, image_file, changes
):
    # from_checkpoint (and so Trainer.resume and `convirt embed`) built the encoder from
    # the metadata's sizes before checking them.
    path = rewrite(tmp_path / "huge.safetensors", *image_file, **changes)
    field = next(iter(changes)).replace("config_", "")
    code, out, err = run_python(f"""
        import convirt
        from convirt.checkpoint import CheckpointError
        try:
            convirt.Encoder.from_checkpoint({path!r})
        except CheckpointError as error:
            print("refused:", error)
    """)
    assert code == 0, err[-2000:]
    assert "refused:" in out and "huge.safetensors" in out and field in out


@pytest.mark.parametrize(
    "changes",
    [
        {"config_vocab_size": 2**40},
        {"config_hidden_size": 2**33},
        {"config_intermediate_size": 2**35},
        {"config_num_hidden_layers": 2**31},
    ],
    ids=[
        "vocab_size=2**40",
        "hidden_size=2**33",
        "intermediate_size=2**35",
        "num_hidden_layers=2**31",
    ],
)
def test_huge_text_metadata_sizes_are_refused_before_building(tmp_path, text_file, changes):
    path = rewrite(tmp_path / "huge.safetensors", *text_file, **changes)
    field = next(iter(changes)).replace("config_", "")
    code, out, err = run_python(f"""
        import convirt
        from convirt.checkpoint import CheckpointError
        try:
            convirt.Encoder.from_checkpoint({path!r})
        except CheckpointError as error:
            print("refused:", error)
    """)
    assert code == 0, err[-2000:]
    assert "refused:" in out and "huge.safetensors" in out and field in out


def test_embed_with_huge_metadata_is_one_line(tmp_path, image_file):
    # convirt embed image.safetensors cache/ out.npy, the file's metadata saying
    # proj_hidden=2**62: a segmentation fault.
    path = rewrite(tmp_path / "huge.safetensors", *image_file, proj_hidden=2**62)
    (tmp_path / "images").mkdir()
    write_png(tmp_path / "images" / "a.png")
    code, _, err = run_python(f"""
        import sys
        from convirt import cli
        sys.exit(cli.main(["embed", {path!r}, {str(tmp_path / "images")!r},
                           {str(tmp_path / "out.npy")!r}, "--no-progress"]))
    """)
    assert code == 1, err[-2000:]
    assert "huge.safetensors" in err and "proj_hidden" in err
    assert len(err.strip().splitlines()) == 1


def test_resume_with_huge_encoder_metadata_is_refused(tmp_path):
    # Trainer.resume of a checkpoint whose image_encoder.safetensors metadata says
    # proj_hidden=2**62: a segmentation fault.
    saved_checkpoint_dir(tmp_path)
    path = os.path.join(
        CheckpointDir(tmp_path / "ckpt").pointer("LAST"), "image_encoder.safetensors"
    )
    tensors, metadata = load_file(path), _metadata(path)
    rewrite(path, tensors, metadata, proj_hidden=2**62)
    code, out, err = run_python(f"""
        from convirt.checkpoint import CheckpointError
        from convirt.trainer import Trainer
        try:
            Trainer.resume({str(tmp_path / "ckpt")!r}, progress=False)
        except CheckpointError as error:
            print("refused:", error)
    """)
    assert code == 0, err[-2000:]
    assert "refused:" in out and "image_encoder.safetensors" in out
    assert "proj_hidden" in out


def test_bert_config_with_an_infinite_layer_norm_eps_is_refused(tmp_path):
    # config.json with "layer_norm_eps": Infinity was accepted (inf > 0), and every
    # LayerNorm then divided by sqrt(inf).
    config = {
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "layer_norm_eps": math.inf,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json.*layer_norm_eps.*finite"):
        convirt.text.read_bert_config(tmp_path / "config.json")
    config["layer_norm_eps"] = 10**400  # an int past float64: OverflowError before
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json.*layer_norm_eps.*finite"):
        convirt.text.read_bert_config(tmp_path / "config.json")


def test_bert_constructor_refuses_an_infinite_layer_norm_eps():
    # Encoder.bert(..., layer_norm_eps=float("inf")) was accepted (the core checks > 0).
    with pytest.raises(ValueError, match="layer_norm_eps.*finite"):
        tiny.bert(layer_norm_eps=math.inf)
    with pytest.raises(ValueError, match="layer_norm_eps.*finite"):
        tiny.bert(layer_norm_eps=10**400)


@pytest.mark.parametrize(
    "target",
    [
        "../elsewhere/step-00000001",
        "ABSOLUTE",
        "step-00000001/../../elsewhere/step-00000001",
    ],
)
def test_last_pointer_outside_the_checkpoint_folder_is_not_followed(tmp_path, target):
    # LAST holding "../elsewhere/step-00000001" (or an absolute path) was followed:
    # resume read a trainer.json from outside the checkpoint folder.
    elsewhere = tmp_path / "elsewhere" / "step-00000001"
    elsewhere.mkdir(parents=True)
    (elsewhere / "trainer.json").write_text(json.dumps({"format": "convirt-checkpoint-1"}))
    (tmp_path / "ckpt" / "step-00000001").mkdir(parents=True)
    (tmp_path / "ckpt" / "LAST").write_text(
        str(elsewhere) if target == "ABSOLUTE" else target
    )
    with pytest.raises(CheckpointError, match=r"LAST.*step-NNNNNNNN"):
        CheckpointDir(tmp_path / "ckpt").load_state()


def test_checkpoint_folder_that_is_a_symlink_out_is_not_followed(tmp_path):
    # ckpt/step-00000001 -> /somewhere/else: the pointer's name is valid, its target is
    # not inside the checkpoint folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "trainer.json").write_text(json.dumps({"format": "convirt-checkpoint-1"}))
    (tmp_path / "ckpt").mkdir()
    os.symlink(elsewhere, tmp_path / "ckpt" / "step-00000001")
    (tmp_path / "ckpt" / "LAST").write_text("step-00000001")
    with pytest.raises(CheckpointError, match="outside"):
        CheckpointDir(tmp_path / "ckpt").load_state()


def write_mimic(
    root, metadata_rows, header=("dicom_id", "subject_id", "study_id", "ViewPosition")
):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(metadata_rows)
    with open(os.path.join(root, "mimic-cxr-2.0.0-split.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dicom_id", "study_id", "subject_id", "split"])
        writer.writerows(
            [[r[0], r[2], r[1], "train"] for r in metadata_rows if len(r) >= 3]
        )
    return str(root)


@pytest.mark.parametrize(
    "row, field",
    [
        (["../../../../outside", "10000032", "50414267", "PA"], "dicom_id"),
        (["d1", "10/../../../..", "50414267", "PA"], "subject_id"),
        (["d1", "10000032", "1/../../../../../x", "PA"], "study_id"),
        (["/etc/passwd", "10000032", "50414267", "PA"], "dicom_id"),
    ],
)
def test_mimic_ids_that_lead_outside_the_root_are_refused(tmp_path, row, field):
    # A metadata row with dicom_id "../../../../outside" made the image path
    # <root>/files/p10/p10000032/s50414267/../../../../outside.jpg, outside the root.
    root = write_mimic(tmp_path / "mimic", [row])
    with pytest.raises(DataFileError, match=rf"metadata\.csv.*line 2.*{field}"):
        MIMICCXRDataset(root)


def prepared_cache(tmp_path):
    images = np.zeros((3, 10, 10), np.uint8)
    prepare(
        data.ArrayDataset(images, ["a.", "b.", "c."]),
        tmp_path / "cache",
        size=8,
        progress=False,
    )
    return tmp_path / "cache"


@pytest.mark.parametrize(
    "field, value",
    [
        ("size", 0),  # accepted: three (0, 0) images
        ("size", -8),
        ("size", "8"),
        ("size", True),
        ("rows", -1),
        ("rows", 1.5),
        ("reports_bytes", -1),
        ("complete", "yes"),
        ("label_names", "abc"),
        ("entries", {}),
    ],
)
def test_prepared_index_fields_are_checked(tmp_path, field, value):
    cache = prepared_cache(tmp_path)
    index = json.loads((cache / "index.json").read_text())
    index[field] = value
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataFileError, match=rf"index\.json.*'{field}'"):
        PreparedDataset(cache)


@pytest.mark.parametrize(
    "where, field, value",
    [
        ("state", "step", -1),
        ("state", "position", "3"),
        ("state", "logit_scale", math.nan),
        ("optimizer", "lr", math.nan),
        ("optimizer", "lr", -1.0),
        ("config", "betas", [0.9]),
        ("config", "lr", "fast"),
        ("config", "image_size", 0),
        ("config", "method", "magic"),
    ],
)
def test_trainer_json_fields_are_checked(tmp_path, where, field, value):
    # trainer.json with "step": -1 (or "lr": NaN, "betas": [0.9]...) was accepted or
    # failed inside the Trainer with an error that did not name the file.
    saved_checkpoint_dir(tmp_path)
    last = CheckpointDir(tmp_path / "ckpt").pointer("LAST")
    path = os.path.join(last, "trainer.json")
    with open(path) as f:
        state = json.load(f)
    target = state if where == "state" else state[where]
    target[field] = value
    with open(path, "w") as f:
        json.dump(state, f)
    with pytest.raises(CheckpointError, match=rf"trainer\.json.*{field}"):
        Trainer.resume(tmp_path / "ckpt", progress=False)


# ======================================================================================
# 4. Poor errors: now the package's error, naming the file, the line or field, and what
#    was expected
# ======================================================================================


def test_latin1_csv_names_the_file_line_and_encoding(tmp_path):
    # A latin-1 CSV raised a bare UnicodeDecodeError ("position 19") without the file.
    path = tmp_path / "pairs.csv"
    path.write_bytes("image,report\na.png,Normal.\nb.png,Épanchement.\n".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"pairs\.csv.* line 3.*UTF-8"):
        CSVDataset(path)


def test_csv_with_a_report_over_128_kb_is_read(tmp_path):
    # A 140 KB report raised _csv.Error "field larger than field limit (131072)": such a
    # CSV could not be read at all.
    report = "No effusion. " * 11000
    path = write_csv(
        tmp_path / "pairs.csv",
        ["image", "report"],
        [["a.png", report], ["b.png", "Short."]],
    )
    limit = csv.field_size_limit()
    assert CSVDataset(path).reports == [report, "Short."]
    assert csv.field_size_limit() == limit  # the process-wide limit is left alone


def test_truncated_csv_gz_is_a_clear_error(tmp_path):
    # A .csv.gz cut in half raised EOFError "Compressed file ended before the
    # end-of-stream marker was reached", naming no file.
    raw = gzip.compress(b"image,report\n" + b"a.png,Normal report.\n" * 2000)
    path = tmp_path / "pairs.csv.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match=r"pairs\.csv\.gz.*truncated"):
        CSVDataset(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataFileError, match=r"pairs\.csv\.gz.*gzip"):
        CSVDataset(path)


def test_csv_path_that_is_a_fifo_says_so(tmp_path):
    # CSVDataset(fifo) said "CSV file not found" about a file that exists.
    os.mkfifo(tmp_path / "pairs.csv")
    with pytest.raises(DataFileError, match=r"pairs\.csv.*not a regular file"):
        CSVDataset(tmp_path / "pairs.csv")


def test_bf16_checkpoint_is_a_clear_error(tmp_path):
    # A BF16 safetensors file raised TypeError "data type 'bfloat16' not understood".
    import struct

    header = json.dumps(
        {"conv1.weight": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    ).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    encoder = convirt.Encoder.resnet18(proj_dim=8, proj_hidden=16)
    with pytest.raises(
        CheckpointError,
        match=r"bf16\.safetensors.*conv1\.weight.*BF16.*"
        r"F32",
    ):
        encoder.load(path)
    with pytest.raises(CheckpointError, match=r"bf16\.safetensors.*BF16"):
        convirt.Encoder.from_checkpoint(path)


def test_metadata_that_is_not_json_names_the_file(tmp_path, image_file):
    # "convirt_encoder": "{bad" raised json.JSONDecodeError naming no file.
    tensors, metadata = image_file
    path = tmp_path / "bad.safetensors"
    path.write_bytes(save(tensors, metadata=dict(metadata, convirt_encoder="{bad")))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*convirt_encoder.*JSON"):
        convirt.Encoder.from_checkpoint(path)


def test_trainer_json_without_lr_names_the_field(tmp_path):
    # trainer.json whose config lacks "lr": Trainer.resume raised KeyError: 'lr'.
    saved_checkpoint_dir(tmp_path)
    path = os.path.join(CheckpointDir(tmp_path / "ckpt").pointer("LAST"), "trainer.json")
    with open(path) as f:
        state = json.load(f)
    del state["config"]["lr"]
    with open(path, "w") as f:
        json.dump(state, f)
    with pytest.raises(CheckpointError, match=r"trainer\.json.*'lr'"):
        Trainer.resume(tmp_path / "ckpt", progress=False)


def test_json_nested_too_deep_is_the_files_error(tmp_path):
    # A trainer.json of 100000 nested arrays raised RecursionError from json.loads.
    from convirt._io import read_json_object

    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match=r"deep\.json nests JSON too deeply"):
        read_json_object(str(path), CheckpointError, "a trainer state")


def test_optimizer_file_without_sizes_names_the_field(tmp_path):
    # optimizer.safetensors without its "sizes" metadata: KeyError: 'sizes'.
    saved_checkpoint_dir(tmp_path)
    path = os.path.join(
        CheckpointDir(tmp_path / "ckpt").pointer("LAST"), "optimizer.safetensors"
    )
    tensors = load_file(path)
    with open(path, "wb") as f:
        f.write(save(tensors))
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors.*'sizes'"):
        Trainer.resume(tmp_path / "ckpt", progress=False)


def test_binary_vocab_txt_names_the_file(tmp_path):
    # A binary vocab.txt raised a bare Exception "Error while reading WordPiece file:
    # stream did not contain valid UTF-8".
    (tmp_path / "vocab.txt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"vocab\.txt.*UTF-8"):
        convirt.text.load_tokenizer(tmp_path)


def test_short_mimic_row_names_the_file_and_line(tmp_path):
    # A metadata row with 2 of its 4 fields raised IndexError: list index out of range.
    root = write_mimic(
        tmp_path / "mimic", [["d1", "10000032", "50414267", "PA"], ["d2", "10000032"]]
    )
    with pytest.raises(DataFileError, match=r"metadata\.csv.* line 3.*2 fields.*4"):
        MIMICCXRDataset(root)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_encode_of_a_dict_is_a_clear_type_error(tiny_towers, tower):
    # encoder.encode({"a": 1}) raised TypeError "unhashable type: 'slice'".
    image, text = tiny_towers
    encoder = image if tower == "image" else text
    with pytest.raises(TypeError, match=f"{tower} encoder.*expected.*got dict"):
        encoder.encode({"a": 1})
    with pytest.raises(TypeError, match=f"{tower} encoder.*expected.*got int"):
        encoder.embed(5)


# ======================================================================================
# 5. Training failures
# ======================================================================================


def small_prepared_cache(tmp_path, capsys):
    """tmp_path/cache: 16 synthetic 32 px pairs, prepared through the CLI."""
    synthetic = [
        "synthetic",
        str(tmp_path / "s"),
        "--n",
        "16",
        "--size",
        "32",
        "--seed",
        "1",
    ]
    assert cli.main(synthetic) == 0
    csv_path = str(tmp_path / "s" / "reports.csv")
    prepare = ["prepare", "--csv", csv_path, "--size", "32", str(tmp_path / "cache")]
    assert cli.main(prepare + ["--no-progress"]) == 0
    capsys.readouterr()


def test_a_diverging_pretrain_is_one_line_with_a_hint(tmp_path, capsys, monkeypatch):
    # convirt pretrain ... --lr 1e8: the loss overflowed at the second step and the
    # command ended in a traceback (TrainingDiverged was not among the errors reported).
    # Adam now refuses an lr above 1 (below), and lr 1 does not diverge in a few steps
    # here, so the loss overflows from the second step on, as it did at 1e8: the
    # trainer's own check turns that into TrainingDiverged.
    real_loss_call = Trainer._loss_call

    def overflowing_from_the_second_step(self, fn):
        def overflow():
            fn()
            raise convirt.NonFiniteError("the similarities overflowed")

        return real_loss_call(self, overflow if self.step_count >= 1 else fn)

    monkeypatch.setattr(Trainer, "_loss_call", overflowing_from_the_second_step)
    small_prepared_cache(tmp_path, capsys)
    code = cli.main(
        [
            "pretrain",
            str(tmp_path / "cache"),
            str(tmp_path / "run"),
            "--method",
            "simclr",
            "--lr",
            "1e-3",
            "--image-model",
            "resnet18",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--proj-dim",
            "8",
            "--epochs",
            "6",
            "--no-progress",
            "--val-fraction",
            "0",
            "--threads",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("convirt pretrain: error: the loss became") and "--lr" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_absurd_learning_rate_is_refused_in_one_line(tmp_path, capsys):
    # --lr 1e8 used to train until the loss overflowed; Adam takes lr in [0, 1].
    small_prepared_cache(tmp_path, capsys)
    code = cli.main(
        ["pretrain", str(tmp_path / "cache"), str(tmp_path / "run"), "--lr", "1e8"]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "lr" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "tensor, value", [("exp_avg", np.nan), ("exp_avg_sq", np.inf), ("exp_avg_sq", -1.0)]
)
def test_resume_refuses_non_finite_optimizer_moments(tmp_path, tensor, value):
    # optimizer.safetensors with a NaN moment: resume succeeded, and the first step made
    # every weight NaN before failing with a ValueError.
    saved_checkpoint_dir(tmp_path)
    path = os.path.join(
        CheckpointDir(tmp_path / "ckpt").pointer("LAST"), "optimizer.safetensors"
    )
    tensors, metadata = load_file(path), _metadata(path)
    tensors[tensor][5] = value
    with open(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))
    with pytest.raises(CheckpointError, match=rf"optimizer\.safetensors.*{tensor}"):
        Trainer.resume(tmp_path / "ckpt", progress=False)


@pytest.mark.parametrize("method", ["convirt", "simclr"])
def test_a_failed_step_leaves_parameters_and_buffers_bit_identical(tiny_towers, method):
    # A NaN weight in the projection head: step() raised TrainingDiverged and left the
    # weights alone, but the forward had already moved the batch-norm running
    # statistics.
    images, reports = tiny.pairs(8, 32)
    image, text = tiny_towers
    trainer = Trainer(
        image,
        text if method == "convirt" else None,
        method=method,
        image_size=32,
        progress=False,
    )
    trainer.step(images[:4], reports[:4] if method == "convirt" else None)
    image.parameters()["projection.2.bias"][0] = np.nan
    towers = [e for e in (image, trainer.text_encoder) if e is not None]
    before = [(e.flat_parameters.tobytes(), e.flat_buffers.tobytes()) for e in towers]
    step_count, scale = trainer.step_count, trainer.loss.logit_scale
    with pytest.raises(TrainingDiverged):
        trainer.step(images[4:], reports[4:] if method == "convirt" else None)
    after = [(e.flat_parameters.tobytes(), e.flat_buffers.tobytes()) for e in towers]
    assert after == before
    assert trainer.step_count == step_count and trainer.loss.logit_scale == scale
