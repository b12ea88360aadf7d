"""The accuracy protocol's worker: one run trained (or resumed) and evaluated in its own
process, stopped at a step boundary when the scheduler's STOP file appears. Part of
``gpu_accuracy.py`` (its ``worker`` command)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from _acc_ledger import save_json


def worker_main(args: argparse.Namespace) -> int:
    """Train (or resume) one run until done or told to stop; evaluate; write a report.

    The run goes through the shared comparison (:func:`otcl.pipelines.compare.train_run` with
    the image pipeline's spec): a finished run is reused, an interrupted one resumed, a
    directory holding other settings refused, and the spec's evaluation follows training. This
    worker adds what is its own: the STOP file, the step count and the timings of its report.
    """
    t_start = time.time()
    report: dict[str, Any] = {"status": "failed"}
    report_path = Path(args.report)
    stop_file = Path(args.stop_file)
    try:
        from otcl.pipelines.compare import Run, train_run
        from otcl.pipelines.comparison import SpecRunner
        from otcl.pipelines.engine.checkpoint import load_checkpoint
        from otcl.pipelines.engine.stops import TrainingInterrupted
        from otcl.pipelines.files import read_jsonl
        from otcl.pipelines.spec import get

        spec = get("ssl")
        cfg = spec.config_cls.from_dict(json.loads(Path(args.config).read_text()))
        run_dir = Path(cfg.train.out)
        marks: dict[str, float] = {}
        stop_after = args.stop_after_steps
        # Stopping goes through the run machinery's own path: a SIGTERM inside fit() is deferred
        # to the end of the current step, then the checkpoint is written (exact resume). This
        # handler only keeps a SIGTERM outside fit() (loading, evaluating) from killing us.
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())

        def request_stop() -> None:
            if not stopping.is_set():
                stopping.set()
                os.kill(os.getpid(), signal.SIGTERM)

        def watch() -> None:  # the scheduler's STOP file -> one SIGTERM
            while not stopping.is_set():
                if stop_file.exists():
                    request_stop()
                    return
                time.sleep(0.2)

        built: list[Any] = []

        def make_trainer(*a: Any, **kw: Any) -> Any:
            """The spec's trainer, its steps counted (no subclass)."""
            tr = spec.trainer_cls(*a, **kw)
            step_fn = tr.train_step

            def counted(epoch: int, step: int) -> Any:
                if tr.steps_here == 0 and stopping.is_set():  # the deadline came while loading
                    os.kill(os.getpid(), signal.SIGTERM)  # deferred to this step's end
                loss = step_fn(epoch, step)
                tr.steps_here += 1
                if tr.steps_here == 1:
                    marks["first_step"] = time.time()
                if stop_after is not None and tr.steps_here == stop_after:
                    request_stop()  # (tests) as if the deadline came now
                return loss

            tr.steps_here, tr.train_step = 0, counted
            report.update(epoch=tr.epoch, global_step=tr.global_step, total_steps=tr.total_steps)
            marks["epoch0"] = tr.epoch
            built.append(tr)
            return tr

        runner = SpecRunner(spec)
        make_trainer.volatile = spec.trainer_cls.volatile  # type: ignore[attr-defined]
        make_trainer.measures = spec.trainer_cls.measures  # type: ignore[attr-defined]
        runner.trainer_cls = make_trainer
        finish = runner.finish

        def timed_finish(run: Any, data: Any) -> None:
            marks["eval0"] = time.time()
            finish(run, data)
            report["eval_s"] = time.time() - marks["eval0"]

        runner.finish = timed_finish  # type: ignore[method-assign]
        threading.Thread(target=watch, daemon=True).start()
        t_train = time.time()
        log = lambda s: print(s, file=sys.stderr)  # noqa: E731
        try:
            state = train_run(runner, Run(run_dir.name, cfg.train.seed, cfg, run_dir), None, log)
            status = "done"
        except TrainingInterrupted:
            state, status = "resume", "stopped"
        report["resumed"] = state == "resume"
        t_done = time.time() - report.get("eval_s", 0.0)
        st = load_checkpoint(run_dir)
        # throughput of this call: the epochs it completed, without the first (compilation)
        recs = [
            r
            for r in read_jsonl(run_dir / "metrics.jsonl")
            if r["epoch"] > marks.get("epoch0", st["epoch"])
        ]
        rates = [r["views_per_s"] for r in recs]
        report.update(
            epoch=int(st["epoch"]),
            global_step=int(st["global_step"]),
            steps_here=built[0].steps_here if built else 0,
            startup_s=(marks["first_step"] - t_start) if "first_step" in marks else None,
            train_s=t_done - t_train,
            views_per_s=statistics.median(rates[1:] or rates) if rates else None,
        )
        if built:
            report["total_steps"] = built[0].total_steps
        if status == "done":
            res = json.loads((run_dir / "eval.json").read_text())
            summary = json.loads((run_dir / "summary.json").read_text())
            report["result"] = {
                "knn": res["knn"],
                "linear": res["linear"],
                "linear_train": res["linear_train"],
                "final_loss": summary.get("final_loss"),
                "views_per_s": summary.get("views_per_s"),
                "seconds_per_epoch": summary.get("seconds_per_epoch"),
                "epochs": summary.get("epochs"),
            }
        report["status"] = status
        rc = 0
    except Exception as e:  # reported to the scheduler, which records it in the ledger
        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()[-4000:]
        print(report["traceback"], file=sys.stderr)
        rc = 1
    save_json(report_path, report)
    return rc
