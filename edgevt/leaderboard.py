"""The sweep's leaderboard: per model and place (host or device) and thread count, the fastest
artifact whose top-1 is within a budget of the model's fp32 PyTorch top-1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgevt.report import Report


def leaderboard(report: Report, max_drop: float) -> list[dict[str, Any]]:
    """One entry per (model, where, threads): the fastest timed artifact that loses at most
    ``max_drop`` points of top-1 against the model's fp32 PyTorch reference (host accuracy of
    that same file; on a device, the device's own top-1 where the bundle measured it).

    A model with random weights has no meaningful top-1: its entry is the fastest file, with
    no accuracy (``top1`` None), and says so."""
    reference = {
        r.model: r.top1 for r in report.rows if r.target == "pytorch" and r.top1 is not None
    }
    random = {r.model for r in report.rows if r.weights == "random"}
    accuracy = {(r.run, r.artifact): r.top1 for r in report.rows if r.top1 is not None}
    on_device = {(d["where"], d["artifact"]): d["top1"] for d in report.device_accuracy}
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for t in report.timings:
        top1 = on_device.get((t.where, t.artifact), accuracy.get((t.run, t.artifact)))
        ref = reference.get(t.model)
        if t.model in random:
            top1 = ref = None
        elif top1 is None or ref is None or ref - top1 > max_drop + 1e-9:
            continue
        key = (t.model, t.where, t.threads)
        if key not in best or t.p50_ms < best[key]["p50_ms"]:
            best[key] = {
                "model": t.model, "where": t.where, "threads": t.threads, "run": t.run,
                "artifact": t.artifact, "target": t.target, "precision": t.precision,
                "p50_ms": t.p50_ms, "top1": top1,
                "drop": None if top1 is None or ref is None else ref - top1,
                "speedup": t.speedup, "random_weights": t.model in random,
            }  # fmt: skip
    return [best[k] for k in sorted(best)]


def leaderboard_table(entries: list[dict[str, Any]]) -> list[list[str]]:
    table = [["model", "where", "threads", "best artifact", "target", "precision", "p50 ms",
              "top-1 %", "drop (pt)", "vs fp32"]]  # fmt: skip
    for e in entries:
        table.append([
            e["model"], e["where"], str(e["threads"]), f"{e['run']}/{e['artifact']}", e["target"],
            e["precision"], f"{e['p50_ms']:.2f}",
            "random weights" if e["random_weights"] else f"{e['top1']:.2f}",
            "–" if e["drop"] is None else f"{e['drop']:+.2f}",
            f"{e['speedup']:.2f}x" if e["speedup"] else "-",
        ])  # fmt: skip
    return table
