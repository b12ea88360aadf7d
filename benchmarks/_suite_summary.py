"""The GPU suite's summary for people: the sections' status table and headline figures in
Markdown (``summary.md``, and ``record_gpu.py``'s ``gpu_suite:cuda`` section). Part of
``gpu_suite.py``."""

from __future__ import annotations

from typing import Any


def status_table(summary: dict[str, Any]) -> list[str]:
    """The sections' status, time and budget as a Markdown table."""
    lines = ["| section | status | seconds | budget |", "|---|---|---:|---:|"]
    for name, e in summary["sections"].items():
        b = e.get("budget_s")
        budget = "" if b is None else f"{b:.0f}"
        lines.append(f"| {name} | {e['status']} | {e.get('seconds', 0):.1f} | {budget} |")
    return lines


def finding_lines(summary: dict[str, Any], level: str = "##") -> list[str]:
    """Every section's headline figures in Markdown (the suite's summary.md and record_gpu.py's
    ``gpu_suite:cuda`` section): the targets, graph breaks and syncs, multi-GPU, concurrency."""
    secs = summary["sections"]
    lines: list[str] = []
    loss = (secs.get("loss") or {}).get("result") or {}
    if loss.get("target"):
        lines += ["", f"{level} Loss speed", "", *loss["target"]]
    train = (secs.get("train") or {}).get("result") or {}
    if train.get("methods"):
        lines += ["", f"{level} Training throughput", ""]
        for k, v in train["methods"].items():
            comp = v.get("compile_s")
            lines.append(
                f"- {k}: {v['views_per_s']:,.0f} views/s; first step {v['first_step_s']:.1f} s"
                + (f", of which compilation {comp:.1f} s" if comp is not None else "")
            )
        if train.get("target"):
            lines += ["", train["target"]]
    syncs = (secs.get("syncs") or {}).get("markdown")
    if syncs:
        lines += ["", f"{level} Graph breaks and device syncs", "", syncs.strip()]
    mg = secs.get("multigpu")
    if mg:
        lines += ["", f"{level} Multi-GPU", "", f"- {mg['status']}"]
        for nproc, r in (mg.get("loss_checks") or {}).items():
            res = r.get("result") or {}
            for name, row in (res.get("losses") or {}).items():
                agree = f", values agree: {row['agree']}" if "agree" in row else ""
                lines.append(
                    f"- {name}, {nproc} rank(s), {res.get('backend')}, N={res.get('n')}: local "
                    f"{row['local_ms']:.2f} ms, gather_distributed {row['gathered_ms']:.2f} ms"
                    f"{agree}"
                )
        tr = mg.get("training") or {}
        if tr.get("views_per_s"):
            ratio = tr.get("torchrun_vs_single")
            lines.append(
                f"- training views/s: single process {tr['views_per_s'].get('single')}, torchrun "
                f"world size 1 {tr['views_per_s'].get('torchrun')}"
                + (f" ({ratio:.3f}x)" if ratio else "")
                + f"; backend named in the log: {', '.join(tr.get('backend_seen') or []) or '-'}"
            )
    stream = (secs.get("streaming") or {}).get("result") or {}
    if stream.get("targets"):
        lines += ["", f"{level} Streaming OT losses", "", *stream["targets"]]
    acc = secs.get("accuracy") or {}
    conc = acc.get("concurrency") or {}
    if conc.get("levels"):
        lines += ["", f"{level} Concurrent trainings on the one GPU", ""]
        lines += ["| processes | views/s in total | per process |", "|---:|---:|---|"]
        for k, v in conc["levels"].items():
            per = ", ".join(f"{x:,.0f}" for x in v["per_process"])
            lines.append(f"| {k} | {v['total_views_per_s']:,.0f} | {per} |")
        lines += ["", f"Chosen: {conc.get('procs')} process(es) at a time ({conc.get('status')})."]
    return lines


def render_summary(summary: dict[str, Any]) -> str:
    """``summary.md``: the run's device, commit and budget, the sections' table, their
    figures and the accuracy protocol's ledger."""
    gpu = summary.get("gpu") or ("no GPU (dry run)" if summary["dry_run"] else "unknown")
    lines = [
        f"# GPU suite, {summary['date']}",
        "",
        f"- device: {gpu}",
        f"- commit: {summary.get('commit') or 'unknown (pass --commit)'}; "
        f"python {summary['python']}",
        f"- budget {summary['budget_s']:.0f} s, wall {summary.get('wall_s', 0):.0f} s"
        + (", DRY RUN (CPU, tiny sizes)" if summary["dry_run"] else ""),
        f"- data preparation: {summary.get('data_prep_s', float('nan')):.1f} s",
        "",
        *status_table(summary),
        *finding_lines(summary),
    ]
    acc = summary["sections"].get("accuracy") or {}
    if acc.get("ledger"):
        lines += ["", "## Accuracy protocol", ""]
        lines += [f"- started {acc.get('started')}, finished {acc.get('finished')}", "", "```"]
        lines += acc["ledger"] + ["```"]
    return "\n".join(lines)
