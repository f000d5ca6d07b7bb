"""Every file convirt writes honours the umask, as open() would: an atomic write's
temporary file (mkstemp, private 0600) is given 0o666 & ~umask before its rename, so
colleagues on a shared cluster can read encoders, checkpoint pointers, tables and
results."""

import os
import stat

import numpy as np
import pytest
import tiny

import convirt
from convirt import _io, cli
from convirt.checkpoint import CheckpointDir
from convirt.embeddings import save_embeddings


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    """Runs the test under this umask, and puts the old one back."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_without_changing_it(umask, monkeypatch):
    assert _io._umask() == umask
    assert _io._umask() == umask

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(_io, "open", no_proc, raising=False)  # os.umask, set and put back
    assert _io._umask() == umask
    assert _io._umask() == umask


def test_atomic_writes_get_the_mode_open_would_give(umask, tmp_path):
    expected = 0o666 & ~umask
    _io.atomic_write(tmp_path / "results.md", b"| a |\n")
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert mode(tmp_path / "results.md") == mode(tmp_path / "plain.txt") == expected


def test_encoders_pointers_and_tables_are_readable_by_others_under_umask_022(
    tmp_path,
):
    # Under umask 022, Encoder.save, the LAST / BEST pointers and the CSV tables were
    # 0600 (mkstemp's mode): a colleague could not read them.
    old = os.umask(0o022)
    try:
        encoder = convirt.Encoder.resnet18(proj_dim=16)
        encoder.save(tmp_path / "image.safetensors")
        assert mode(tmp_path / "image.safetensors") == 0o644

        image, text = tiny.towers(str(tmp_path / "vocab"))
        trainer = convirt.Trainer(
            image, text, image_size=32, progress=False, checkpoint_dir=tmp_path / "ckpt"
        )
        saved = trainer.save_checkpoint(best=True)
        for name in ("LAST", "BEST"):
            assert mode(tmp_path / "ckpt" / name) == 0o644, name
        for name in os.listdir(saved):
            assert mode(os.path.join(saved, name)) == 0o644, name
        assert CheckpointDir(tmp_path / "ckpt").pointer("LAST") == saved

        features = np.zeros((2, 3), np.float32)
        for written in save_embeddings(tmp_path / "features.csv", ["a", "b"], features):
            assert mode(written) == 0o644, written

        assert cli.main(["synthetic", str(tmp_path / "s"), "--n", "2", "--size", "32"]) == 0
        assert mode(tmp_path / "s" / "reports.csv") == 0o644
    finally:
        os.umask(old)
