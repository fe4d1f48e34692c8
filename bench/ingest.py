"""Ingest benchmark: end-to-end ingest rate against raw signature verification.

One run prints, with figures measured in the same run on the same machine:
- ingest events/s end to end (decode JSON Lines, verify, store, merge) on a synthetic corpus
  (default 200,000 events), through ``pithnode import`` in a child process;
- the raw PyNaCl verify rate on the same signatures (the physical limit), and the ratio
  (target >= 0.75);
- for a larger corpus (default 1,000,000 events): peak RSS of the importing process
  (target < 400 MB), store size against the events' canonical bytes (target <= 1.5x), cold
  open time of that store (target < 2 s), and lookup latency by Pith Number and by arXiv id
  (target p99 < 1 ms).

Usage: python bench/ingest.py [--events N] [--big-events N] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED = 7
CACHE = Path(tempfile.gettempdir()) / "pithnode-bench-corpus"


def _chunk(args: tuple[int, int, int]) -> tuple[list[bytes], list[tuple[str, str]]]:
    from pithnode.node.synth import SynthConfig, synth_keys, synth_record

    seed, start, stop = args
    keys = synth_keys(seed)
    cfg = SynthConfig(seed=seed)
    lines: list[bytes] = []
    ids: list[tuple[str, str]] = []
    for i in range(start, stop):
        rec = synth_record(keys, i, cfg)
        lines.extend(e.canonical_bytes() for e in rec.events)
        ids.append((rec.pith_number, rec.canonical_record["source"]["id"]))
    return lines, ids


def corpus(events: int) -> tuple[Path, Path, Path]:
    """A JSON Lines corpus of at least ``events`` events (cached between runs)."""
    from pithnode.node.synth import synth_keys

    records = max(1, events * 10 // 66)  # about 6.6 events per record
    base = CACHE / f"seed{SEED}-r{records}"
    jsonl, ids, spec = base / "events.jsonl", base / "records.json", base / "network.toml"
    if jsonl.exists() and ids.exists() and spec.exists():
        return jsonl, ids, spec
    base.mkdir(parents=True, exist_ok=True)
    print(f"generating {records:,} synthetic records (cached in {base}) ...", flush=True)
    step = 2000
    jobs = [(SEED, s, min(records, s + step)) for s in range(0, records, step)]
    all_ids: list[tuple[str, str]] = []
    tmp = jsonl.with_suffix(".tmp")
    with multiprocessing.Pool(os.cpu_count() or 1) as pool, open(tmp, "wb") as out:
        for lines, chunk_ids in pool.imap(_chunk, jobs):
            out.write(b"\n".join(lines) + b"\n")
            all_ids.extend(chunk_ids)
    tmp.replace(jsonl)
    ids.write_text(json.dumps(all_ids))
    spec.write_text(synth_keys(SEED).spec_toml())
    return jsonl, ids, spec


def count_lines(path: Path) -> tuple[int, int]:
    n = size = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
                size += len(line.rstrip(b"\n"))
    return n, size


def raw_verify_rate(jsonl: Path, limit: int) -> float:
    """PyNaCl verifications per second over the corpus' own signatures (one core)."""
    import base64

    import nacl.signing

    from pithnode.protocol.canonical import canonical_json
    from pithnode.protocol.events import event_from_json

    work = []
    with open(jsonl, "rb") as f:
        for line in f:
            if len(work) >= limit:
                break
            ev = event_from_json(json.loads(line))
            digest = hashlib.sha256(canonical_json(ev.core())).digest()
            pub = bytes.fromhex(ev.signer.key_id.split(":", 1)[1])
            work.append((nacl.signing.VerifyKey(pub), digest, base64.b64decode(
                json.loads(line)["signature_b64"])))
    start = time.perf_counter()
    for vk, digest, sig in work:
        vk.verify(digest, sig)
    return len(work) / (time.perf_counter() - start)


def import_child(jsonl: Path, spec: Path, data_dir: Path) -> tuple[float, int]:
    """Run ``pithnode import`` in a child; returns (seconds, peak RSS in bytes)."""
    data_dir.mkdir(parents=True)
    shutil.copy(spec, data_dir / "network.toml")
    cmd = [sys.executable, "-m", "pithnode.node.cli", "import", str(jsonl),
           "--data-dir", str(data_dir), "--progress", "none"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"import failed: {cmd}")
    return seconds, usage.ru_maxrss * 1024


def cold_open_and_lookups(data_dir: Path, ids: list[tuple[str, str]]) -> dict[str, float]:
    """Open the store in a fresh process; time the open and 2,000 lookups of each kind."""
    script = f"""
import json, random, sys, time
t0 = time.perf_counter()
from pithnode.protocol.spec import spec_from_toml
from pithnode.storage.store import Store
spec = spec_from_toml(open({str(data_dir / 'network.toml')!r}).read())
t1 = time.perf_counter()
store = Store({str(data_dir / 'store.sqlite')!r}, spec, readonly=True)
store.stats()
t2 = time.perf_counter()
ids = json.loads(sys.stdin.read())
rnd = random.Random(1)
sample = [ids[rnd.randrange(len(ids))] for _ in range(2000)]
out = {{"open_s": t2 - t1, "import_s": t1 - t0}}
for name, idx in (("pith", 0), ("arxiv", 1)):
    lat = []
    for row in sample:
        a = time.perf_counter()
        st = store.state(row[idx])
        lat.append(time.perf_counter() - a)
        assert st is not None, row
    lat.sort()
    out[name + "_p50_ms"] = lat[len(lat) // 2] * 1e3
    out[name + "_p99_ms"] = lat[int(len(lat) * 0.99)] * 1e3
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(ids), text=True,
                          capture_output=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--big-events", type=int, default=1_000_000)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pithnode-bench-") as tmp:
        jsonl, _, spec = corpus(args.events)
        n, canon = count_lines(jsonl)
        print(f"corpus: {n:,} events, {canon / 1e6:.1f} MB canonical", flush=True)
        seconds, _ = import_child(jsonl, spec, Path(tmp) / "small")
        rate = n / seconds
        verify = raw_verify_rate(jsonl, min(n, 50_000))
        figures += [
            {"name": "ingest end to end", "value": round(rate), "unit": "events/s"},
            {"name": "raw PyNaCl verify (1 core)", "value": round(verify), "unit": "verifies/s"},
            {"name": "ingest / raw verify", "value": round(rate / verify, 3),
             "target": ">= 0.75", "met": rate / verify >= 0.75},
        ]
        print(f"ingest {rate:,.0f} events/s; raw verify {verify:,.0f}/s; "
              f"ratio {rate / verify:.2f}", flush=True)

        big_jsonl, big_ids_file, big_spec = corpus(args.big_events)
        big_n, big_canon = count_lines(big_jsonl)
        big_dir = Path(tmp) / "big"
        big_seconds, rss = import_child(big_jsonl, big_spec, big_dir)
        store_bytes = sum(p.stat().st_size for p in big_dir.glob("store.sqlite*"))
        ids = json.loads(big_ids_file.read_text())
        random.Random(0).shuffle(ids)
        look = cold_open_and_lookups(big_dir, ids[:50_000])
        figures += [
            {"name": "events in the large store", "value": big_n},
            {"name": "large import rate", "value": round(big_n / big_seconds),
             "unit": "events/s"},
            {"name": "peak RSS of the import", "value": round(rss / 2**20), "unit": "MiB",
             "target": "< 400", "met": rss < 400 * 2**20},
            {"name": "store bytes / canonical bytes", "value": round(store_bytes / big_canon, 3),
             "peer": f"{big_canon / 1e6:.0f} MB canonical", "target": "<= 1.5",
             "met": store_bytes / big_canon <= 1.5},
            {"name": "cold open", "value": round(look["open_s"], 3), "unit": "s",
             "target": "< 2", "met": look["open_s"] < 2},
        ]
        for kind in ("pith", "arxiv"):
            figures.append({"name": f"lookup by {kind} p50", "value": round(
                look[f"{kind}_p50_ms"], 3), "unit": "ms"})
            figures.append({"name": f"lookup by {kind} p99", "value": round(
                look[f"{kind}_p99_ms"], 3), "unit": "ms", "target": "< 1",
                "met": look[f"{kind}_p99_ms"] < 1})
    print("\nsummary")
    for f in figures:
        verdict = "met" if f.get("met") else "MISSED"
        extra = f" (target {f['target']}: {verdict})" if "target" in f else ""
        print(f"  {f['name']}: {f['value']} {f.get('unit', '')}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "ingest", "events": n,
                                               "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
