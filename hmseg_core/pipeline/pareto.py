"""The paper's claim checked on a zoo index: do the searched variants lie on or above the line of the
hand-designed ones at their measured latency?

HMSeg (paper Table 1: MRMS 73.7 % at 14.7 ms, the searched HMSeg 74.3 % at 12.0 ms) claims that its
searched networks dominate the hand-designed MRMS at equal or lower latency. Over an index whose
entries carry latencies measured side by side (``zoo build``'s measure stage; the shipped zoo), a
variant is *hand-designed* when its genotype is that of a registered network (``mrms``,
``mrms_tiny``), *searched* otherwise. For each searched variant :func:`pareto_report` gives

* the hand-designed line at its latency: linear between the two hand-designed variants around it
  (``None`` outside their range, or with fewer than two);
* the verdict: above or below that line by how much; outside the range, dominated by a
  hand-designed variant (one at most as slow and at least as accurate), dominating one, or not
  comparable (faster and less accurate than all of them, or slower and more accurate);

and for every variant whether it is on the Pareto front (no other at most as slow and at least as
accurate, better in one of the two).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..genotype import GenotypeError
from ..runtime.zoo import ModelZoo, Variant

#: the latency statistics an index entry records per backend (``latency.<backend>.<stat>_ms``)
STATS = ("p50", "p95")


@dataclass(frozen=True)
class Point:
    name: str
    latency_ms: float
    miou: float
    hand_designed: bool


def hand_designed_name(variant: Variant) -> Optional[str]:
    """The registered network ``variant`` is (its recorded genotype that of ``mrms``, ``mrms_tiny``, ...),
    or ``None`` for a searched one. Without a recorded genotype, its name decides."""
    from ..genotype import Genotype
    from ..registry import get_genotype, list_models

    text = variant.extra.get("genotype")
    if not text:
        return variant.name if variant.name in list_models() else None
    genotype = Genotype.parse(str(text))
    for name in list_models():
        if get_genotype(name, genotype.num_classes).format() == genotype.format():
            return name
    return None


def latency_of(variant: Variant, backend: str, stat: str = "p95") -> Optional[float]:
    """``variant``'s measured whole-frame latency on ``backend`` (ms), ``None`` if the index has none."""
    if stat not in STATS:
        raise ValueError(f"stat {stat!r}: one of {', '.join(STATS)}")
    value = ((variant.extra.get("latency") or {}).get(backend) or {}).get(f"{stat}_ms")
    return None if value is None else float(value)


def dominates(a: Point, b: Point) -> bool:
    """``a`` at most as slow and at least as accurate as ``b``, better in one of the two."""
    return a.latency_ms <= b.latency_ms and a.miou >= b.miou and (a.latency_ms < b.latency_ms or a.miou > b.miou)


def line_at(latency_ms: float, hand: Sequence[Point]) -> Optional[float]:
    """The hand-designed variants' mIoU line at ``latency_ms``: linear between the two around it; ``None``
    outside their latency range or with fewer than two."""
    pts = sorted(hand, key=lambda p: p.latency_ms)
    for lo, hi in zip(pts, pts[1:]):
        if lo.latency_ms <= latency_ms <= hi.latency_ms:
            if hi.latency_ms == lo.latency_ms:
                return max(lo.miou, hi.miou)
            t = (latency_ms - lo.latency_ms) / (hi.latency_ms - lo.latency_ms)
            return lo.miou + t * (hi.miou - lo.miou)
    return None


def _verdict(p: Point, hand: Sequence[Point]) -> Dict[str, Any]:
    line = line_at(p.latency_ms, hand)
    over = [h.name for h in hand if dominates(h, p)]
    under = [h.name for h in hand if dominates(p, h)]
    if line is not None:
        margin = p.miou - line
        claim = "holds" if margin >= 0 and not over else "fails"
        text = f"{'above' if margin >= 0 else 'below'} the hand-designed line by {100 * margin:+.2f}"
        return {"line_miou": line, "margin": margin, "claim": claim,
                "verdict": text + (f"; dominated by {', '.join(over)}" if over else "")}
    if over:
        return {"line_miou": None, "margin": None, "claim": "fails", "verdict": f"dominated by {', '.join(over)}"}
    if under:
        return {"line_miou": None, "margin": None, "claim": "holds", "verdict": f"dominates {', '.join(under)}"}
    side = "faster and less accurate" if all(p.latency_ms < h.latency_ms for h in hand) else "slower and more accurate"
    return {"line_miou": None, "margin": None, "claim": "untested",
            "verdict": f"{side} than every hand-designed variant: outside their line" if hand else "no hand-designed variant"}


def pareto_report(zoo: ModelZoo, backend: str = "onnxruntime", stat: str = "p95") -> Dict[str, Any]:
    """Every variant of ``zoo`` with its latency on ``backend``, front membership and, if searched, its
    verdict against the hand-designed line; ``unmeasured``: the variants without a latency there."""
    points, unmeasured = [], []
    for v in zoo.variants:
        ms = latency_of(v, backend, stat)
        if ms is None:
            unmeasured.append(v.name)
        else:
            try:
                hand_designed = hand_designed_name(v) is not None
            except GenotypeError as e:
                raise GenotypeError(f"{zoo.path}: variant {v.name!r}: {e} (write it as `hmseg-core zoo publish` does)") from None
            points.append(Point(v.name, ms, v.miou, hand_designed))
    hand = [p for p in points if p.hand_designed]
    rows = []
    for p in sorted(points, key=lambda q: q.latency_ms):
        row = {**asdict(p), "front": not any(dominates(q, p) for q in points)}
        if not p.hand_designed:
            row.update(_verdict(p, hand))
        rows.append(row)
    searched = [r for r in rows if not r["hand_designed"]]
    summary = {c: [r["name"] for r in searched if r["claim"] == c] for c in ("holds", "fails", "untested")}
    return {"backend": backend, "stat": stat, "rows": rows, "claim": summary, "unmeasured": unmeasured}


def format_report(report: Dict[str, Any]) -> str:
    """The report as a Markdown table and one line on the paper's claim."""
    lines = [f"| variant | kind | {report['backend']} {report['stat']} (ms) | val mIoU | Pareto front | hand-designed line there | verdict |",
             "| --- | --- | ---: | ---: | --- | ---: | --- |"]
    for r in report["rows"]:
        line = "" if r.get("line_miou") is None else f"{100 * r['line_miou']:.2f} %"
        lines.append(f"| {r['name']} | {'hand-designed' if r['hand_designed'] else 'searched'} | {r['latency_ms']:.2f} | "
                     f"{100 * r['miou']:.2f} % | {'yes' if r['front'] else 'no'} | {line} | {r.get('verdict', '')} |")
    c = report["claim"]
    n = sum(len(v) for v in c.values())
    parts = [f"holds for {len(c['holds'])} of {n}" + (f" ({', '.join(c['holds'])})" if c["holds"] else "")]
    if c["fails"]:
        parts.append(f"fails for {', '.join(c['fails'])}")
    if c["untested"]:
        parts.append(f"untested for {', '.join(c['untested'])} (outside the hand-designed line)")
    lines.append("")
    lines.append("Searched variants on or above the hand-designed line at their latency (the paper's claim): " + "; ".join(parts) + ".")
    if report["unmeasured"]:
        lines.append(f"Not measured on {report['backend']}: {', '.join(report['unmeasured'])}.")
    return "\n".join(lines)


__all__ = ["Point", "STATS", "dominates", "format_report", "hand_designed_name", "latency_of", "line_at", "pareto_report"]
