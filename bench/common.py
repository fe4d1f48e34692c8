"""What the benchmarks share: the machine they ran on, and figures in the form
``bench/run_all.py`` renders into BENCHMARKS.md."""

from __future__ import annotations

import multiprocessing
import os
import platform
from pathlib import Path
from typing import Any

#: Events per synthetic record, on average (``pithnode synth``'s default rates).
EVENTS_PER_RECORD = 6.6


def _synth_chunk(args: tuple[int, int, int]) -> list[bytes]:
    from pithnode.node.synth import SynthConfig, synth_keys, synth_record

    seed, start, stop = args
    keys, cfg = synth_keys(seed), SynthConfig(seed=seed)
    return [e.canonical_bytes() for i in range(start, stop)
            for e in synth_record(keys, i, cfg).events]


def synth_events(seed: int, events: int, step: int = 500) -> list[bytes]:
    """Exactly ``events`` canonical synthetic events of ``seed`` (whole records in order,
    the last one cut), made on every CPU."""
    records = int(events / EVENTS_PER_RECORD * 1.1) + 10
    jobs = [(seed, s, min(records, s + step)) for s in range(0, records, step)]
    out: list[bytes] = []
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        for lines in pool.imap(_synth_chunk, jobs):
            out.extend(lines)
            if len(out) >= events:
                pool.terminate()
                break
    if len(out) < events:
        raise SystemExit(f"the corpus came out short: {len(out)} < {events}")
    return out[:events]


def _proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` on the first line of ``path`` that starts with ``key``."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """CPUs, CPU model, memory, Python, system and load average, read now."""
    kib = _proc_field("/proc/meminfo", "MemTotal")
    return {"nproc": os.cpu_count(), "cpu": _proc_field("/proc/cpuinfo", "model name")
            or platform.processor() or "unknown",
            "memory": f"{int(kib.split()[0]) >> 20} GiB" if kib else "unknown",
            "python": platform.python_version(), "system": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def figure(name: str, value: Any, unit: str = "", *, target: str = "", peer: str = "",
           ratio: float | None = None) -> dict[str, Any]:
    """One figure: ``target`` is ``">= N"`` or ``"<= N"`` and is checked against ``ratio``
    when one is given (a figure measured against its ``peer``), else against ``value``."""
    out: dict[str, Any] = {"name": name, "value": value, "unit": unit}
    if peer:
        out["peer"] = peer
    if ratio is not None:
        out["ratio"] = round(ratio, 3)
    if target:
        out["target"] = target
        op, bound = target.split()
        checked = ratio if ratio is not None else value
        out["met"] = checked >= float(bound) if op == ">=" else checked <= float(bound)
    return out


def show(f: dict[str, Any]) -> str:
    """One figure as a line of text."""
    v = f["value"]
    text = f"{f['name']}: {v:,.3f}" if isinstance(v, float) else f"{f['name']}: {v:,}" \
        if isinstance(v, int) else f"{f['name']}: {v}"
    if f["unit"]:
        text += f" {f['unit']}"
    if "peer" in f:
        text += f" ({f['peer']})"
    if "ratio" in f:
        text += f", ratio {f['ratio']}"
    if "target" in f:
        text += f" (target {f['target']}: {'met' if f['met'] else 'MISSED'})"
    return text
