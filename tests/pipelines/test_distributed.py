"""Training under torchrun: 2 gloo processes on CPU against one process.

Two real ``torchrun`` launches are shared by the module (about 30 s on 2 free cores):

* **A**, multi-node style (two agents, ``--nnodes 2 --nproc-per-node 1``, c10d rendezvous on
  localhost): ``otcl train`` that rank 1 interrupts by sending SIGINT to its own
  agent during global step 4 -- only rank 1 receives the signal, rank 0 must learn it from the
  stop flag;
* **B**, one node (``--nproc-per-node 2``), nine commands in one process group: the resume of
  A, the same run from scratch, a batch that does not split over 2 processes,
  ``otcl multimodal train``, ``otcl recsys train`` for CML + DMM and for the two-tower
  (gca-uot + DMM, extra negatives, ID dropout), ``otcl compare`` twice (the second reuses),
  and the image run with the streaming geometry (``--loss-param geometry=streaming``).

The image runs use DMM over gca-uot with input-space mixing (the global-batch Sinkhorn, the
per-step augmentation draws, DMM's lambda and partners from the global batch, two DDP forwards
per step) and GroupNorm (no BatchNorm: SyncBatchNorm needs CUDA), so 2 processes must match one
process up to float32 rounding: measured max |dw| 3e-8 after 6 SGD steps (weights of size ~1);
forgetting the world-size factor before backward gives 9e-4. Tolerance: 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from otcl.cli import main as otcl
from otcl.pipelines.engine import distributed
from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.trainer import EpochTrainer
from otcl.pipelines.files import read_jsonl
from otcl.pipelines.sources.images import Augment

from .conftest import write_ml100k

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5  # max |w_2proc - w_1proc| (measured 3e-8)

IMAGE = [
    "train", "--no-progress", "--epochs", "2", "--batch-size", "32",
    "--set", "train.max_steps_per_epoch=3", "--set", "model.width=4",
    "--set", "model.norm=group", "--set", "model.head_bn=false",
    "--set", "train.deterministic=true", "--device", "cpu",
    "--loss", "dmm", "--loss-param", "base=gca-uot", "--loss-param", "warmup=0",
]  # fmt: skip
RECSYS = [
    "recsys", "train", "--no-progress", "--epochs", "2", "--batch-size", "64",
    "--set", "train.max_steps_per_epoch=3", "--set", "train.deterministic=true",
    "--device", "cpu", "--dmm",
]  # fmt: skip
COMPARE = [
    "compare", "--losses", "gca-uot", "--seeds", "1", "--no-plot", *IMAGE[1:-6],
    "--set", "eval.linear_epochs=2",
]  # fmt: skip
TWO_TOWER = ["--model", "two-tower", "--loss", "gca-uot", "--negatives", "4"]
STREAMING = ["--loss-param", "geometry=streaming", "--loss-param", "tile_size=16"]
MULTIMODAL = [
    "multimodal", "train", "--no-progress", "--epochs", "1", "--batch-size", "64",
    "--set", "train.max_steps_per_epoch=3", "--set", "train.deterministic=true",
    "--device", "cpu", "--loss", "gca-uot", "--loss-param", "layout=cross",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, jobs: list[list[str]], *, nnodes: int, signal_at: str = "") -> list:
    """Run ``jobs`` (otcl argument lists) under torchrun with 2 processes in all; returns each
    rank's list of {argv, rc, stdout, stderr}."""
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OTCL_TEST_SIGNAL": signal_at}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    port = _free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
                "--nproc-per-node", str(2 // nnodes)]  # fmt: skip
    worker = ["-m", "tests.pipelines._torchrun_worker", str(out), *map(json.dumps, jobs)]
    logs = [out / f"agent{n}.log" for n in range(nnodes)]  # files: a full pipe would block
    agents = []
    where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t"]
    for log in logs:
        with open(log, "wb") as f:
            agents.append(
                subprocess.Popen(
                    [*launcher, *where, *worker],
                    cwd=ROOT,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
    results = [out / f"rank{r}.json" for r in range(2)]
    deadline = time.monotonic() + 300
    try:  # the workers' results are what counts; torchrun's own shutdown may linger
        while any(a.poll() is None for a in agents) and time.monotonic() < deadline:
            if all(f.is_file() for f in results):
                deadline = min(deadline, time.monotonic() + 30)
            time.sleep(0.2)
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.wait()
    ranks = []
    for r, f in enumerate(results):
        said = "\n".join(log.read_text(errors="replace") for log in logs)[-3000:]
        assert f.is_file(), f"rank {r} wrote no results; torchrun said:\n{said}"
        ranks.append(json.loads(f.read_text()))
    return ranks


def _otcl_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("otcl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("yaml")
    tmp = tmp_path_factory.mktemp("ddp")
    ml = str(write_ml100k(tmp / "ml", n_users=60, n_items=80, n_ratings=2000))
    a = _torchrun(tmp / "a", [[*IMAGE, "--out", str(tmp / "a" / "run")]], nnodes=2, signal_at="1:3")
    shutil.copytree(tmp / "a" / "run", tmp / "a-copy")  # resumed by one process below
    b = _torchrun(
        tmp / "b",
        [
            ["train", "--resume", str(tmp / "a" / "run")],
            [*IMAGE, "--out", str(tmp / "b" / "full")],
            [*IMAGE, "--batch-size", "33", "--out", str(tmp / "b" / "bad")],
            [*MULTIMODAL, "--out", str(tmp / "b" / "mm")],
            [*RECSYS, "--data-dir", ml, "--out", str(tmp / "b" / "cml")],
            [*RECSYS, *TWO_TOWER, "--data-dir", ml, "--out", str(tmp / "b" / "tt")],
            [*COMPARE, "--out", str(tmp / "b" / "cmp")],
            [*COMPARE, "--out", str(tmp / "b" / "cmp")],
            [*IMAGE, *STREAMING, "--out", str(tmp / "b" / "stream")],
        ],
        nnodes=1,
    )
    return {"tmp": tmp, "a": a, "b": b, "ml": ml}


def _one_process(args: list[str], out: Path) -> dict[str, torch.Tensor]:
    assert otcl([*args, "--out", str(out)]) == 0
    return load_checkpoint(out)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_processes_train_like_one_process(runs, tmp_path):
    b = runs["b"]
    assert [r[1]["rc"] for r in b] == [0, 0]
    full = runs["tmp"] / "b" / "full"
    ref = _one_process(IMAGE, tmp_path / "one")
    assert _max_diff(load_checkpoint(full)["model"], ref) < TOL
    two = [r["loss"] for r in read_jsonl(full / "metrics.jsonl")]
    one = [r["loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    assert two == pytest.approx(one, rel=1e-6)  # the global loss, logged by rank 0


def test_streaming_geometry_under_two_processes(runs, tmp_path):
    """``--loss-param geometry=streaming`` under torchrun (DMM over a streamed gca-uot, each rank
    its rows against the global columns, tile by tile) trains as the dense loss in one process."""
    assert [r[8]["rc"] for r in runs["b"]] == [0, 0], runs["b"][0][8]["stderr"][-2000:]
    stream = runs["tmp"] / "b" / "stream"
    ref = _one_process(IMAGE, tmp_path / "one")
    assert _max_diff(load_checkpoint(stream)["model"], ref) < TOL


def test_rank_zero_alone_writes_logs_and_prints(runs):
    b, full = runs["b"], runs["tmp"] / "b" / "full"
    assert len(read_jsonl(full / "metrics.jsonl")) == 2  # one record per epoch, not per rank
    summary = json.loads((full / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    st = load_checkpoint(full)
    assert st["world_size"] == 2 and len(st["rng_ranks"]) == 2
    zero, one = b[0][1], b[1][1]
    assert zero["stdout"].count("dmm: 2 epochs") == 1
    assert one["stdout"] == "" and _otcl_lines(one["stderr"]) == []


def test_a_signal_on_one_rank_stops_every_rank_and_the_run_resumes_exactly(runs):
    a, b, tmp = runs["a"], runs["b"], runs["tmp"]
    assert [r[0]["rc"] for r in a] == [128 + signal.SIGINT] * 2
    lines = [line for r in a for line in _otcl_lines(r[0]["stderr"])]
    assert len(lines) == 1 and "interrupted by SIGINT at epoch 1, step 1" in lines[0], lines
    # the checkpoint of the signal (after the 4th of 6 steps), written once for both ranks
    assert [r[0]["rc"] for r in b] == [0, 0]
    resumed, full = load_checkpoint(tmp / "a" / "run"), load_checkpoint(tmp / "b" / "full")
    for k, v in full["model"].items():
        assert torch.equal(resumed["model"][k], v), k  # bit-identical to the uninterrupted run
    losses = [r["loss"] for r in read_jsonl(tmp / "a" / "run" / "metrics.jsonl")]
    ref = [r["loss"] for r in read_jsonl(tmp / "b" / "full" / "metrics.jsonl")]
    assert losses == pytest.approx(ref, rel=1e-6)  # epoch means: float32 sums, regrouped


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    """The global batch does not depend on the number of processes: a run interrupted under
    torchrun continues in one process (rank 0's RNG states) and ends as the 2-process run."""
    tmp = runs["tmp"]
    assert otcl(["train", "--resume", str(tmp / "a-copy"), "--no-progress"]) == 0
    full = load_checkpoint(tmp / "b" / "full")["model"]
    assert _max_diff(load_checkpoint(tmp / "a-copy")["model"], full) < TOL


def test_a_batch_that_does_not_split_fails_on_every_rank_with_one_line(runs):
    b = runs["b"]
    assert [r[2]["rc"] for r in b] == [2, 2]
    assert _otcl_lines(b[0][2]["stderr"]) == [
        "otcl: error: train.batch_size: 33 is the global batch, split evenly over the 2 "
        "processes of torchrun; use a multiple of 2 (e.g. 32)"
    ]
    assert _otcl_lines(b[1][2]["stderr"]) == []
    assert not (runs["tmp"] / "b" / "bad" / "checkpoint.pt").exists()


def test_multimodal_under_two_processes(runs, tmp_path):
    b, mm = runs["b"], runs["tmp"] / "b" / "mm"
    assert [r[3]["rc"] for r in b] == [0, 0]
    assert (mm / "robustness.json").is_file()
    ref = _one_process(MULTIMODAL, tmp_path / "one")
    assert _max_diff(load_checkpoint(mm)["model"], ref) < TOL


@pytest.mark.parametrize("job,name,extra", [(4, "cml", []), (5, "tt", TWO_TOWER)])
def test_recsys_under_two_processes(runs, tmp_path, job, name, extra):
    """Every rank embeds the global batch (ID dropout, renormalisation and negatives of one
    process) and takes its rows; CML's triplet and the two-tower's gca-uot, both under DMM."""
    b = runs["b"]
    assert [r[job]["rc"] for r in b] == [0, 0]
    ref = _one_process([*RECSYS, *extra, "--data-dir", runs["ml"]], tmp_path / "one")
    assert _max_diff(load_checkpoint(runs["tmp"] / "b" / name)["model"], ref) < TOL


def test_compare_under_two_processes(runs):
    """Every rank trains each run, rank 0 evaluates and writes; a rerun reuses the run."""
    b, cmp = runs["b"], runs["tmp"] / "b" / "cmp"
    assert [r[j]["rc"] for r in b for j in (6, 7)] == [0, 0, 0, 0]
    results = json.loads((cmp / "results.json").read_text())
    assert list(results["methods"]) == ["gca-uot"] and results["pipeline"] == "ssl"
    assert (cmp / "gca-uot" / "seed0" / "eval.json").is_file()
    assert b[0][6]["stdout"].count("| gca-uot | 1 |") == 1 and b[1][6]["stdout"] == ""
    assert "finished earlier, reusing its results" in b[0][7]["stderr"]
    assert "reusing" not in b[1][7]["stderr"]


# -- in one process --------------------------------------------------------------------------
def test_augment_shard_gets_the_draws_of_its_rows_in_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g)
    aug = Augment(8, rotate=10.0)
    whole = aug(x, torch.Generator().manual_seed(5))
    parts = [aug(x[i : i + 4], torch.Generator().manual_seed(5), (i, 12)) for i in (0, 4, 8)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-6)
    alone = aug(x[4:8], torch.Generator().manual_seed(5))  # the rows as a batch of their own
    assert not torch.allclose(parts[1], alone)
    with pytest.raises(ValueError, match="shard"):
        aug(x[:4], None, (10, 12))


class _Toy(EpochTrainer):
    """A linear model on random vectors, two noisy views, the configured loss."""

    n = 48

    def build(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.n, 6, generator=g)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)
        )
        self.loss_fn = self.build_loss()
        self.steps_per_epoch = self.n // self.batch_size

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        x = self.x[self.batch_indices(self.n, epoch, step)]
        noise = torch.randn(2, *x.shape, generator=self.step_generator("noise"))
        z = self.forward_model(torch.cat([x + 0.1 * noise[0], x + 0.1 * noise[1]]))
        return self.loss_fn(z[: x.shape[0]], z[x.shape[0] :])


def test_batch_indices_split_the_global_batch_over_ranks(tmp_path, toy_config):
    tr = _Toy(toy_config(), tmp_path / "run")
    whole = [tr.batch_indices(tr.n, 1, s) for s in range(3)]
    shards = []
    for rank in range(4):
        tr.world, tr.rank = 4, rank
        tr._shard_batch()
        shards.append([tr.batch_indices(tr.n, 1, s) for s in range(3)])
    for s in range(3):
        assert torch.equal(torch.cat([sh[s] for sh in shards]), whole[s])
    tr.world = 3
    with pytest.raises(ValueError, match=r"batch_size: 16 .* multiple of 3 \(e\.g\. 15\)"):
        tr._shard_batch()
    tr.close()


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of world size 1 in this process (torchrun with one process)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_one_process_under_ddp_trains_bit_identically(tmp_path, toy_config):
    """World size 1 (the path a one-GPU ``torchrun`` takes): DDP around the model, the loss
    with gather_distributed; the same weights as without a process group, bit for bit."""
    plain = _Toy(toy_config(), tmp_path / "plain")
    assert plain.forward_model is plain.model
    plain.fit()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = _Toy(toy_config(), tmp_path / "ddp")
        assert isinstance(ddp.forward_model, distributed.DistributedModel)
        assert ddp.loss_fn.gather_distributed
        ddp.fit()
    finally:
        dist.destroy_process_group()
    for k, v in plain.model.state_dict().items():
        assert torch.equal(ddp.model.state_dict()[k], v), k
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 1


def test_a_step_that_bypasses_ddp_is_an_error(tmp_path, toy_config, one_rank_group):
    class Bypass(_Toy):
        def compute_loss(self, epoch, step):
            x = self.x[self.batch_indices(self.n, epoch, step)]
            z = self.model(torch.cat([x, x + 0.1]))  # not through self.forward_model
            return self.loss_fn(z[: x.shape[0]], z[x.shape[0] :])

    with pytest.raises(RuntimeError, match="forward_model"):
        Bypass(toy_config(), tmp_path / "run").fit()


def test_distributed_model_routes_the_model_methods_through_ddp(one_rank_group):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.name = "two"

        def encode(self, x):
            return self.lin(x)

        def forward(self, x):
            return self.encode(x).sum(-1)

    model = Two()
    dm = distributed.wrap_model(model, torch.device("cpu"))
    x = torch.randn(4, 3)
    torch.testing.assert_close(dm.encode(x), model.encode(x))
    torch.testing.assert_close(dm(x), model(x))
    assert dm.forwards == 2  # both went through DDP's forward
    assert dm.name == "two" and dm.lin is model.lin  # attributes are the model's own
    assert dm.state_dict().keys() == model.state_dict().keys()  # nn.Module methods: direct
    assert dm.forwards == 2


def test_without_a_process_group_the_helpers_do_nothing():
    assert distributed.current() is None and distributed.is_main()
    assert distributed.broadcast([1, 2]) == [1, 2]
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.main_then_broadcast(lambda: 7) == 7
    assert distributed.local_main_first(lambda: 8) == 8
    assert distributed.any_signal(None) == 0 and distributed.any_signal(15) == 15
    with pytest.raises(ValueError, match="boom"), distributed.agreed():
        raise ValueError("boom")
