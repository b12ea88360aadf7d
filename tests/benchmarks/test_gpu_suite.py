"""benchmarks/gpu_suite.py in --dry-run (every section on CPU, tiny sizes): two runs in a row
as two budgeted GPU runs (the second resumes the first's kept runs), the compact checkpoints,
the state limit, and record_gpu.py on the result."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("yaml")
pytest.importorskip("PIL")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def acc():
    return _load("gpu_accuracy")


def _suite(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "gpu_suite.py"), "--dry-run", "--commit", "test", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """Two dry-run calls: the first stops the protocol's runs after 2 steps (as a deadline
    would), the second resumes them from the first's $OUT/state and finishes them."""
    first = tmp_path_factory.mktemp("call1")
    _suite("--out", str(first), "--acc-stop-after-steps", "2")
    second = tmp_path_factory.mktemp("call2")
    _suite("--out", str(second), "--sections", "accuracy", "--resume-from", str(first / "state"))
    return first, second


def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def test_dry_run_writes_every_section_in_at_most_eight_files(calls):
    out = calls[0]
    files = _files(out)
    assert len(files) <= 8  # what the suite promises (docs/gpu.md)
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 2 and all(re.fullmatch(r"[\w.-]+", s) for s in rel.parts)
    summary = json.loads((out / "summary.json").read_text())
    secs = summary["sections"]
    assert list(secs) == ["loss", "train", "syncs", "multigpu", "streaming", "accuracy"]
    for name in ("loss", "train", "syncs", "streaming", "accuracy"):
        assert secs[name]["status"] == "ok", (name, secs[name]["status"])
    mg = secs["multigpu"]
    assert mg["status"] == "losses, 1 rank(s): ok; training: ok"  # otcl train under torchrun
    rates = mg["training"]["views_per_s"]
    assert rates["single"] > 0 and rates["torchrun"] > 0 and mg["training"]["backend_seen"]
    dist = mg["loss_checks"]["1"]["result"]
    assert dist["world_size"] == 1 and dist["losses"]["gca-uot"]["agree"]
    assert summary["dry_run"] and summary["commit"] == "test"
    # each section's numbers, parsed
    loss = secs["loss"]["result"]
    assert loss["dtype"] == "bf16" and set(loss["results"]["16"]["time_s"]) == {
        "infonce",
        "gca-uot[implicit]",
    }
    assert "## CPU" in secs["loss"]["markdown"]
    train = secs["train"]["result"]["methods"]
    assert {"plain", "otcl:gca-uot"} == set(train)
    assert all(v["views_per_s"] > 0 and v["first_step_s"] > 0 for v in train.values())
    syncs = secs["syncs"]["result"]
    assert [r["loss"] for r in syncs["losses"]] == ["gca-uot"]
    assert "error" in syncs["losses"][0]["explain"] or syncs["losses"][0]["explain"]["graphs"]
    assert syncs["trainer"]["encoder"]["breaks"] == 0  # the compiled part: one graph
    assert "gca-uot" in syncs["trainer"]["step_host_reads"]
    stream = secs["streaming"]["result"]["results"]["32"]
    assert set(stream) == {
        "infonce:dense",
        "gca-uot:dense",
        "infonce:streaming",
        "gca-uot:streaming",
    }
    assert stream["gca-uot:streaming"]["passes"]["score"] == 22  # 10 iterations: 11 + 11
    assert "<!--" not in secs["streaming"]["markdown"] and "| 32 |" in secs["streaming"]["markdown"]
    conc = secs["accuracy"]["concurrency"]
    assert set(conc["levels"]) == {"1", "2"} and conc["procs"] in (1, 2)
    assert (out / "summary.md").read_text().startswith("# GPU suite")
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    for f in ("loss_speed.json", "train_speed.json", "graph_breaks.json", "logs/suite.log"):
        assert f in names
    assert not any(n.endswith(".pt") for n in names)


def test_first_call_carries_the_stopped_runs(calls, acc):
    state = calls[0] / "state"
    ledger = acc.load_ledger(state)
    for r in ledger["runs"]:
        assert r["status"] == "partial" and r["global_step"] == 2 and r["parts"] == 1
        assert (state / f"ckpt-{r['id']}.pt.part0").exists()
        assert r["calls"][0]["status"] == "stopped"


def test_second_call_resumes_and_finishes_them(calls, acc):
    summary = json.loads((calls[1] / "summary.json").read_text())
    assert list(summary["sections"]) == ["accuracy"]
    ledger = acc.load_ledger(calls[1] / "state")
    epochs = ledger["recipe"]["train"]["epochs"]
    assert [r["id"] for r in ledger["runs"]] == ["infonce-s0", "gca-uot-s0"]
    for r in ledger["runs"]:
        assert r["status"] == "done" and r["epoch"] == epochs and r["compact_resumes"] == 1
        assert 0 <= r["result"]["knn"] <= 1 and 0 <= r["result"]["linear"] <= 1
        assert [c["epochs"] for c in r["calls"]] == [[0, 0], [0, epochs]]
    assert len(ledger["calls"]) == 2 and ledger["concurrency"]["procs"] in (1, 2)
    assert list((calls[1] / "state").glob("ckpt-*")) == []  # nothing left to carry


def test_record_gpu_writes_its_sections_only(calls, tmp_path):
    record = _load("record_gpu")
    docs = tmp_path / "docs"
    docs.mkdir()
    before = "# Benchmarks\n\nkept text\n\n<!-- other:begin -->\nkept section\n<!-- other:end -->\n"
    (docs / "benchmarks.md").write_text(before)
    with pytest.raises(SystemExit, match="dry run"):
        record.main([str(calls[1]), "--docs", str(docs)])
    copy = ["--ledger-copy", str(tmp_path / "ledger.json"), "--allow-dry-run"]
    record.main([str(calls[0]), "--docs", str(docs), *copy])  # loss, train, ...
    record.main([str(calls[1]), "--docs", str(docs), *copy])  # ... then accuracy
    text = (docs / "benchmarks.md").read_text()
    assert text.startswith(before)  # everything else kept
    for key in ("loss_speed:cuda", "train_speed:cuda", "gpu_suite:cuda"):
        assert f"<!-- {key}:begin -->" in text
    assert "otcl:gca-uot" in text and "commit test" in text
    assert json.loads((tmp_path / "ledger.json").read_text())["runs"][0]["status"] == "done"
    res = (docs / "results.md").read_text()
    assert "| infonce | 1 / 1 |" in res and "| gca-uot | 1 / 1 |" in res and "92.61" in res


# -- the pieces, without processes ---------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real checkpoint of the recipe's trainer (a width-16 CNN: tensors large enough to pack)."""
    from otcl.pipelines.sources.images import ImageData
    from otcl.pipelines.ssl.config import Config
    from otcl.pipelines.ssl.trainer import SSLTrainer

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.arange(64) % 4
    data = ImageData("tiny", x, y, x[:16], y[:16], list("abcd"), (0.5,) * 3, (0.5,) * 3)
    cfg = Config()
    cfg.data.dataset = "cifar10"
    cfg.model.arch, cfg.model.width, cfg.model.head_hidden, cfg.model.head_out = (
        "small-cnn",
        16,
        64,
        16,
    )
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 2, 16, False
    cfg.eval.knn_k = 5
    out = tmp_path_factory.mktemp("ckpt") / "run"
    SSLTrainer(cfg, out, data=data).fit()
    return out


def test_compact_checkpoint_roundtrip(run_dir, tmp_path, acc):
    from otcl.pipelines.engine.checkpoint import load_checkpoint

    full = load_checkpoint(run_dir)
    blob = acc.compact_checkpoint(run_dir)
    assert len(blob) < 0.6 * (run_dir / "checkpoint.pt").stat().st_size  # (small tensors: ~1/2)
    st = acc.expand_checkpoint(blob, tmp_path / "run")
    again = load_checkpoint(tmp_path / "run")
    packed = 0
    for k, v in full["model"].items():
        w = again["model"][k]
        assert w.dtype == v.dtype and w.shape == v.shape
        if v.is_floating_point() and v.numel() >= 1024:
            packed += 1  # bf16: relative error <= 2^-9
            torch.testing.assert_close(w, v, rtol=2**-8, atol=0)
        else:
            assert torch.equal(w, v), k  # BatchNorm statistics, biases, counters: exact
    assert packed >= 3
    for i, s in full["optimizer"]["state"].items():
        m, m2 = s["momentum_buffer"], again["optimizer"]["state"][i]["momentum_buffer"]
        rows = m.reshape(m.shape[0], -1).abs().amax(1).view(-1, *[1] * (m.dim() - 1))
        assert ((m2 - m).abs() <= rows / 254 + 1e-12).all()  # int8, one scale per row
    for key in ("epoch", "global_step", "step_in_epoch", "scheduler", "config", "done"):
        assert again[key] == full[key] == st[key]
    assert torch.equal(again["rng"]["torch"], full["rng"]["torch"])
    for name in ("config.yaml", "metrics.jsonl"):
        assert (tmp_path / "run" / name).read_text() == (run_dir / name).read_text()
    # compacting the expanded checkpoint changes nothing more (bf16 and int8 are fixed points)
    acc.expand_checkpoint(acc.compact_checkpoint(tmp_path / "run"), tmp_path / "run2")
    third = load_checkpoint(tmp_path / "run2")
    for k, v in again["model"].items():
        assert torch.equal(third["model"][k], v)


def test_a_damaged_compact_checkpoint_fails_the_integrity_check(run_dir, tmp_path, acc):
    """The compact carry is a checkpoint file like any other: its payload's SHA-256 is checked
    on reading, so a flipped byte is refused (that run then starts again) and nothing is
    written."""
    blob = bytearray(acc.compact_checkpoint(run_dir))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="run: "):
        acc.expand_checkpoint(bytes(blob), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_parts_split_and_join(tmp_path, acc):
    blob = bytes(range(256)) * 40  # 10240 bytes
    assert acc.write_parts(blob, tmp_path, "x-s0", part_bytes=4096) == 3
    assert [p.stat().st_size for p in sorted(tmp_path.glob("ckpt-x-s0.pt.part*"))] == [
        4096,
        4096,
        2048,
    ]
    assert acc.read_parts(tmp_path, "x-s0", 3) == blob
    (tmp_path / "ckpt-x-s0.pt.part1").unlink()
    with pytest.raises(ValueError, match="lacks ckpt-x-s0.pt.part1"):
        acc.read_parts(tmp_path, "x-s0", 3)


def test_carry_limit_keeps_the_most_advanced_runs(run_dir, tmp_path, acc):
    import shutil

    ledger = acc.new_ledger(acc.recipe(True), (("infonce", 0), ("gca-uot", 0), ("hcl", 0)))
    for r, step in zip(ledger["runs"], (3, 7, 5), strict=True):
        shutil.copytree(run_dir, tmp_path / "runs" / r["id"])
        r.update(status="stopped", global_step=step, epoch=1)
    acc.write_state(ledger, tmp_path / "runs", None, tmp_path / "state", 1, lambda s: None)
    got = {r["id"]: r for r in acc.load_ledger(tmp_path / "state")["runs"]}
    assert got["gca-uot-s0"]["status"] == "partial" and got["gca-uot-s0"]["parts"] == 1
    for rid in ("infonce-s0", "hcl-s0"):
        assert got[rid]["status"] == "pending" and got[rid]["global_step"] == 0
        assert "dropped (carry limit)" in got[rid]["notes"][0]
    assert [p.name for p in (tmp_path / "state").glob("ckpt-*")] == ["ckpt-gca-uot-s0.pt.part0"]


def test_concurrency_choice_and_recipe_guard(acc, tmp_path):
    m = {"levels": {"1": {"total_views_per_s": 100.0}, "2": {"total_views_per_s": 150.0},
                    "4": {"total_views_per_s": 152.0}}}  # fmt: skip
    assert acc.choose_procs(m) == 2  # the fewest within 5 % of the best
    assert acc.choose_procs(None) == 1
    assert acc.per_process_rate(m, 2, 1.0) == 75.0
    assert acc.per_process_rate(None, 2, 60.0) == 30.0
    rec = acc.recipe(True)
    other = json.loads(json.dumps(rec))
    other["train"]["device"] = "cuda"  # volatile: the same protocol
    assert acc.comparable(other) == acc.comparable(rec)
    other["optim"]["lr"] = 1.0
    assert acc.comparable(other) != acc.comparable(rec)
    acc.save_json(tmp_path / "queue.json", acc.new_ledger(other, acc.DRY_PROTOCOL))
    with pytest.raises(ValueError, match="another recipe"):
        acc.run_section(
            state_in=tmp_path, state_out=tmp_path / "out", work=tmp_path / "w", budget_s=5,
            data_dir=None, dry_run=True, call={},
        )  # fmt: skip


def test_a_ledger_without_its_checkpoint_starts_that_run_again(acc, tmp_path):
    """A fresh checkout has the committed ledger but not the carried parts."""
    ledger = acc.new_ledger(acc.recipe(True), acc.DRY_PROTOCOL)
    ledger["runs"][0].update(status="partial", epoch=1, global_step=3, parts=1)
    acc.save_json(tmp_path / "queue.json", ledger)
    summary = acc.run_section(
        state_in=tmp_path, state_out=tmp_path / "out", work=tmp_path / "w", budget_s=0.5,
        data_dir=None, dry_run=True, call={"id": "t"}, procs=1, log=lambda s: None,
    )  # fmt: skip
    assert summary["started"] == []  # no time to start anything
    run = acc.load_ledger(tmp_path / "out")["runs"][0]
    assert run["status"] == "pending" and run["global_step"] == 0
    assert "unreadable" in run["notes"][0]


def test_suite_arguments_and_wrapper(acc, monkeypatch):
    suite = _load("gpu_suite")
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(SystemExit):
        suite.parse_args(["--dry-run"])  # no --out, no $OUT
    with pytest.raises(SystemExit):
        suite.parse_args(["--out", "x", "--sections", "loss,bogus"])
    sh = BENCH / "gpu_suite.sh"
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    verdict = _load("train_speed").target_verdict
    assert "**met**" in verdict("cuda", {"otcl:infonce": 43_000, "otcl:gca-uot": 40_000}, 512)
    text = verdict("cuda", {"otcl:infonce": 30_000, "otcl:gca-uot": 20_000}, 512)
    assert text.count("**missed**") == 2 and "0.71x the target" in text
    assert verdict("cpu", {"otcl:infonce": 1, "otcl:gca-uot": 1}, 512) == ""
