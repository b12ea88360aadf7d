"""The data fingerprint of a run (otcl.pipelines.engine.fingerprint): a comparison that would
reuse or resume a run trained on other data refuses it in one line (``--force`` trains it
again), and so does ``train --resume``."""

from __future__ import annotations

import pytest

from otcl.cli import main
from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.fingerprint import DataChanged, check_fingerprint, fingerprint_of

from ..conftest import write_ml100k

TINY = ["--dim", "8", "--epochs", "1", "--no-progress", "--set", "eval.ks=[1,5]"]


def _edit(ml):
    """Change one rating in place (same size: only the hash tells)."""
    lines = (ml / "u.data").read_text().splitlines()
    u, i, r, t = lines[0].split("\t")
    lines[0] = "\t".join([u, i, str(1 + int(r) % 5), t])
    (ml / "u.data").write_text("\n".join(lines) + "\n")


def test_fingerprint_sees_a_changed_added_or_removed_file(tmp_path):
    ml = write_ml100k(tmp_path / "ml")
    before = fingerprint_of(ml)
    assert set(before) == {"u.data", "u.item", "u.user"}
    assert fingerprint_of(ml / "u.data") == {"u.data": before["u.data"]}
    assert fingerprint_of(None) == {} and fingerprint_of(tmp_path / "nope") == {}
    size = (ml / "u.data").stat().st_size
    _edit(ml)
    after = fingerprint_of(ml)
    assert after["u.data"] != before["u.data"] and (ml / "u.data").stat().st_size == size
    assert after["u.item"] == before["u.item"]
    with pytest.raises(DataChanged, match=r"other data \(u.data changed\); HINT"):
        check_fingerprint(before, after, "run", "HINT")
    (ml / "extra.csv").write_text("x\n")
    with pytest.raises(DataChanged, match=r"u.data changed \(and 1 more file\(s\)\)"):
        check_fingerprint(before, fingerprint_of(ml), "run", "HINT")
    check_fingerprint(None, after, "run", "HINT")  # a run saved before fingerprints


def test_a_gzip_archive_rebuilt_from_the_same_files_is_the_same_data(tmp_path):
    import gzip

    f = tmp_path / "data.tar.gz"
    f.write_bytes(gzip.compress(b"same rows", mtime=1))
    before = fingerprint_of(f)
    f.write_bytes(gzip.compress(b"same rows", mtime=2))  # only the header's time differs
    assert fingerprint_of(f) == before
    f.write_bytes(gzip.compress(b"other rows", mtime=2))
    assert fingerprint_of(f) != before


def test_compare_refuses_a_run_of_changed_data_and_force_trains_it_again(tmp_path, capsys):
    ml = write_ml100k(tmp_path / "ml")
    out = tmp_path / "cmp"
    argv = ["recsys", "compare", "--data-dir", str(ml), "--out", str(out), "--methods", "cml",
            "--seeds", "1", "--jobs", "1", "--no-plot", *TINY]  # fmt: skip
    assert main(argv) == 0
    ckpt = out / "cml" / "seed0" / "checkpoint.pt"
    assert set(load_checkpoint(ckpt)["data_fingerprint"]) == {"u.data", "u.item", "u.user"}
    capsys.readouterr()
    _edit(ml)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("otcl: error:") == 1 and "Traceback" not in err
    assert "was trained on other data (u.data changed); use a new --out, or --force" in err
    assert main([*argv, "--force"]) == 0
    err = capsys.readouterr().err
    assert "reusing" not in err
    assert main(argv) == 0  # trained again on today's data: reused now
    assert "reusing" in capsys.readouterr().err


def test_train_resume_refuses_changed_data(tmp_path, capsys):
    ml = write_ml100k(tmp_path / "ml")
    run = tmp_path / "run"
    argv = ["recsys", "train", "--data-dir", str(ml), "--out", str(run), *TINY]
    assert main(argv) == 0
    _edit(ml)
    capsys.readouterr()
    assert main(["recsys", "train", "--resume", str(run), "--extend", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "was trained on other data (u.data changed); train it again into a new --out" in err
