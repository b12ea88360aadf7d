"""Record a GPU suite run: its ``$OUT`` -> docs/benchmarks.md and docs/results.md sections.

After a run of ``benchmarks/gpu_suite.sh`` (docs/gpu.md), its results folder (``$OUT``) holds
``summary.json``, ``summary.md``, ``logs.tar.gz`` and ``state/``. This script writes, each
between its own markers so that nothing else changes:

* docs/benchmarks.md ``loss_speed:cuda`` -- section 1 (loss speed and memory vs InfoNCE);
* docs/benchmarks.md ``train_speed:cuda`` -- section 2 (training throughput, compile time);
* docs/benchmarks.md ``gpu_suite:cuda`` -- the run itself: device, date, commit, every
  section's status and time, the targets, graph breaks and syncs, the multi-GPU check and the
  concurrency measurement;
* docs/results.md ``gpu_accuracy`` -- the accuracy protocol from ``state/queue.json`` (every
  run finished so far, over all suite runs) next to the published numbers.

A section whose status is not ``ok`` keeps what the page already holds (a failed run never
erases figures); ``--commit`` names the measured commit when the run did not record it. The
ledger is also copied to ``benchmarks/gpu-ledger.json`` (commit it: a fresh checkout resumes
the protocol from it, docs/gpu.md).

Usage::

    python benchmarks/record_gpu.py "$OUT" [--commit abc1234]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from _report import replace_section  # noqa: E402
from gpu_suite import finding_lines, status_table  # noqa: E402

#: published CIFAR-10 numbers the protocol is compared with
PUBLISHED_LINEAR = {  # GCA (Chen et al., NeurIPS 2024), fine-tuned encoder, best test epoch
    "gca-uot": 92.61,
    "gca-ince": 92.36,
    "infonce": 92.01,
    "iot": 90.99,
    "iot-uni": 90.89,
}
PUBLISHED_KNN = {"infonce": 84.8}  # lightly's SimCLR benchmark: 200 epochs, batch 512, kNN

RESULTS_HEADER = (
    "# Results\n\nMeasured results of otcl's losses; each section says how it was made.\n"
)


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = 100 * statistics.fmean(xs)
    return f"{m:.2f} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{m:.2f}"


def provenance(summary: dict[str, Any], commit: str | None) -> str:
    dev = summary.get("gpu") or "unknown device"
    sha = summary.get("commit") or commit or "unknown"
    dry = " **(dry run on CPU: not GPU figures)**" if summary.get("dry_run") else ""
    return (
        f"- GPU suite run {summary.get('call_id', summary['date'])} on {dev}, commit {sha}"
        f" (`benchmarks/gpu_suite.py`, recorded by `benchmarks/record_gpu.py`){dry}"
    )


def _with_provenance(markdown: str, line: str) -> str:
    """The section with ``line`` after its heading."""
    head, _, rest = markdown.partition("\n")
    return f"{head}\n\n{line}\n{rest}" if head.startswith("#") else f"{line}\n\n{markdown}"


def suite_section(summary: dict[str, Any], commit: str | None) -> str:
    lines = [
        "## GPU suite",
        "",
        provenance(summary, commit),
        f"- date: {summary['date']}; budget {summary['budget_s']:.0f} s, wall "
        f"{summary.get('wall_s', 0):.0f} s; data preparation "
        f"{summary.get('data_prep_s', float('nan')):.1f} s",
        "",
        *status_table(summary),
        *finding_lines(summary, level="###"),
    ]
    return "\n".join(lines)


def accuracy_section(ledger: dict[str, Any], summary: dict[str, Any], commit: str | None) -> str:
    rec = ledger["recipe"]
    t, o, m, e = rec["train"], rec["optim"], rec["model"], rec["eval"]
    by_loss: dict[str, list[dict[str, Any]]] = {}
    for r in ledger["runs"]:
        by_loss.setdefault(r["loss"], []).append(r)
    lines = [
        "## CIFAR-10 accuracy protocol on a GPU",
        "",
        provenance(summary, commit) + " (the latest suite run; every run is in the ledger)",
        f"- recipe: {rec['data']['dataset']}, {m['arch']} (head {m['head_hidden']}-"
        f"{m['head_out']}), {t['epochs']} epochs, batch {t['batch_size']}, SGD lr {o['lr']} x "
        f"batch/128, wd {o['weight_decay']}, cosine, amp {t['amp']}, compile {t['compile']}; "
        "every loss at its defaults (temperature 0.5; gca-uot rho 0.2, 10 iterations), "
        "dmm over infonce",
        f"- evaluation: frozen backbone features, kNN k={e['knn_k']} t={e['knn_t']}, linear "
        f"probe {e['linear_epochs']} epochs, final-epoch test accuracy (no selection on test)",
        "- data: a JPEG-compressed CIFAR-10 copy (not the original PNG pixels)",
        f"- suite runs so far: {len(ledger.get('calls', []))}",
        "",
        "| loss | runs done / planned | kNN % | linear % | published linear % "
        "(GCA, fine-tuned, best epoch) | published kNN % (lightly) | resumed from a "
        "compact checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for loss, runs in by_loss.items():
        done = [r for r in runs if r["status"] == "done" and r["result"]]
        knn = [r["result"]["knn"] for r in done]
        lin = [r["result"]["linear"] for r in done]
        pub = PUBLISHED_LINEAR.get(loss)
        pub_knn = PUBLISHED_KNN.get(loss)
        resumes = sum(r["compact_resumes"] for r in done)
        lines.append(
            f"| {loss} | {len(done)} / {len(runs)} | {_mean_std(knn)} | {_mean_std(lin)} | "
            f"{'-' if pub is None else f'{pub:.2f}'} | "
            f"{'-' if pub_knn is None else f'{pub_knn:.1f}'} | {resumes} |"
        )
    left = [r for r in ledger["runs"] if r["status"] != "done"]
    lines += [""]
    if left:
        lines.append(
            "Remaining: "
            + ", ".join(f"{r['id']} ({r['status']}, epoch {r['epoch']})" for r in left)
            + ". Each suite run continues them (docs/gpu.md)."
        )
    else:
        lines.append("Every run of the protocol is done.")
    lines += [
        "",
        "Reading: the GCA numbers come from its official evaluation, which fine-tunes the "
        "encoder and reports the best test epoch, lightly's from the maximum kNN over epochs; "
        "here the encoder is frozen and the final epoch is reported, on a JPEG copy of the "
        "data. Differences of a few tenths between losses are within the seed spread where it "
        "is shown. A run resumed across suite runs continues from bf16 weights and int8 momentum "
        "(benchmarks/gpu_accuracy.py), not bit-identically.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="the run's $OUT (summary.json, state/queue.json)")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="the docs folder to update")
    p.add_argument("--commit", help="the measured commit, if the run did not record it")
    p.add_argument(
        "--ledger-copy",
        default=str(BENCH / "gpu-ledger.json"),
        help="where to copy state/queue.json, to be committed (default benchmarks/gpu-ledger.json)",
    )
    p.add_argument("--allow-dry-run", action="store_true", help="record a dry run (tests)")
    args = p.parse_args(argv)
    folder, docs = Path(args.folder), Path(args.docs)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"record_gpu: cannot read {folder / 'summary.json'}: {e}") from None
    if summary.get("dry_run") and not args.allow_dry_run:
        raise SystemExit("record_gpu: this is a dry run (CPU); nothing to record")
    bench, results = docs / "benchmarks.md", docs / "results.md"
    written = []
    secs = summary["sections"]
    line = provenance(summary, args.commit)
    for name, key in (("loss", "loss_speed:cuda"), ("train", "train_speed:cuda")):
        e = secs.get(name) or {}
        if e.get("status") == "ok" and e.get("markdown"):
            replace_section(bench, key, _with_provenance(e["markdown"], line))
            written.append(f"{bench}: {key}")
    replace_section(bench, "gpu_suite:cuda", suite_section(summary, args.commit))
    written.append(f"{bench}: gpu_suite:cuda")
    ledger_path = folder / "state" / "queue.json"
    if ledger_path.exists():
        ledger = json.loads(ledger_path.read_text())
        body = accuracy_section(ledger, summary, args.commit)
        replace_section(results, "gpu_accuracy", body, header=RESULTS_HEADER)
        written.append(f"{results}: gpu_accuracy")
        Path(args.ledger_copy).write_text(ledger_path.read_text())
        written.append(f"the ledger -> {args.ledger_copy}")
    print("recorded: " + "; ".join(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
