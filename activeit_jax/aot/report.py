"""The compile report: a terminal table and a JSON document (written atomically)."""
from __future__ import annotations

from typing import Any, Mapping

from activeit_jax.core import io_utils

GIB = 1 << 30


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def size(value: float) -> str:
    """Bytes in binary units: "8.75G", "10.2M", "512K", "64B"."""
    for unit, scale in (("G", GIB), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}B"


def _collectives(collectives: Mapping[str, Mapping[str, float]]) -> str:
    if not collectives:
        return "-"
    return ", ".join(f"{kind} x{int(entry['count'])} {size(entry['bytes'])}"
                     for kind, entry in sorted(collectives.items()))


def table(result: Mapping[str, Any]) -> str:
    """The report as text: a header, one row per program, the advice under it."""
    target = result["target"]
    lines = [f"target {target['topology']}: {target['num_chips']} x {target['chip']} "
             f"({_gib(target['hbm_bytes'])} GiB HBM, {target['peak_flops'] / 1e12:.0f} "
             f"TFLOP/s bf16, {target['hbm_bandwidth'] / 1e9:.0f} GB/s per chip); mesh "
             + " x ".join(f"{k}={v}" for k, v in result["mesh"].items()),
             "per device:"]
    header = ("program", "shape", "args", "out", "temp", "total", "HBM", "fits", "TFLOP",
              "GB moved", "roofline", "collectives")
    rows = []
    for report in result["programs"]:
        if report.get("out_of_memory"):
            rows.append((report["program"],
                         "x".join(str(v) for v in report["shape"].values()), "-", "-", "-",
                         f">{size(report['total_bytes'])}",
                         f">{100 * report['total_bytes'] / report['hbm_bytes']:.0f}%", "NO",
                         "-", "-", "-", "compiler: out of memory"))
            continue
        rows.append((report["program"], "x".join(str(v) for v in report["shape"].values()),
                     size(report["argument_bytes"]),
                     size(report["output_bytes"] - report["alias_bytes"]),
                     size(report["temp_bytes"]), size(report["total_bytes"]),
                     f"{100 * report['total_bytes'] / report['hbm_bytes']:.0f}%",
                     "yes" if report["fits"] else "NO", f"{report['flops'] / 1e12:.3g}",
                     f"{report['bytes_accessed'] / 1e9:.3g}",
                     f"{report['roofline_seconds'] * 1e3:.3g} ms {report['bound'][0]}",
                     _collectives(report["collectives"])))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths))
                     .rstrip())
    lines.append("(bytes in binary units; out = outputs not aliased to donated arguments; roofline: "
                 "c = compute-bound, m = memory-bound)")
    for report in result["programs"]:
        if report.get("out_of_memory"):
            lines.append(f"{report['program']}: {report['out_of_memory']}")
        advice = report.get("advice")
        if advice:
            lines.append(f"{report['program']}: {advice['text']}")
    return "\n".join(lines)


def write_json(path: str, result: Mapping[str, Any]) -> None:
    """Writes the result as JSON, atomically."""
    io_utils.atomic_write_json(path, dict(result))

