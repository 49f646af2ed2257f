"""The segment node's ``/diagnostics`` status: level, message and values from its statistics."""

from __future__ import annotations

from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from hmseg_core.runtime import Selection


def _ms(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def segmentation_status(name: str, stats: Dict, sel: Selection, hardware_id: str, extra: Dict[str, str]) -> DiagnosticStatus:
    """WARN when no variant fits the budget or the measured p95 exceeds it, else OK; the values: the
    variant and its backend candidates, latency, rate, frame counters, bad messages by kind, and the
    p50/p95 of every stage (``stats`` as :meth:`SegmentNode.stats` returns it; ``extra`` values first)."""
    budget = sel.budget_ms
    level, message = DiagnosticStatus.OK, "ok"
    if not sel.fits:
        level, message = DiagnosticStatus.WARN, f"no variant fits the {budget:g} ms budget; running the fastest"
    elif budget > 0 and stats["latency_p95_ms"] is not None and stats["latency_p95_ms"] > budget:
        level, message = DiagnosticStatus.WARN, f"p95 latency {stats['latency_p95_ms']:.1f} ms exceeds the {budget:g} ms budget"
    values = {
        "variant": sel.variant.name,
        **extra,
        "backend_candidates": sel.measurement.choice.describe() if sel.measurement.choice else sel.measurement.backend,
        "latency_budget_ms": f"{budget:g}",
        "latency_p50_ms": _ms(stats["latency_p50_ms"]),
        "latency_p95_ms": _ms(stats["latency_p95_ms"]),
        "fps": f"{stats['fps']:.2f}",
        "frames_received": str(stats["received"]),
        "frames_processed": str(stats["processed"]),
        "frames_dropped": str(stats["dropped"]),
        "bad_messages": str(sum(stats["bad"].values())),
        **{f"bad_{k}": str(v) for k, v in sorted(stats["bad"].items())},
    }
    for stage, st in stats["stages"].items():
        values[f"stage_{stage}_p50_ms"] = _ms(st["p50_ms"])
        values[f"stage_{stage}_p95_ms"] = _ms(st["p95_ms"])
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])
