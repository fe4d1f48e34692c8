"""``pithnode synth``: a deterministic synthetic corpus for tests, benchmarks and demos."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.progress import Progress

from .cli_context import Context
from .errors import CliError
from .synth import SynthConfig, generate, synth_keys


def register(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a synthetic corpus signed by TEST keys")
    p.add_argument("--records", type=int, required=True, help="number of records")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=1, help="same seed, same bytes (default 1)")
    p.add_argument("--invalid-rate", type=float, default=0.02,
                   help="share of native events made invalid on purpose (default 0.02)")
    p.add_argument("--equivocation-rate", type=float, default=0.02,
                   help="share of records with an equivocating signer (default 0.02)")
    p.set_defaults(handler=cmd_synth)


def cmd_synth(args: argparse.Namespace, ctx: Context) -> int:
    if args.records < 1 or args.records > 10_000_000:
        raise CliError("--records must be from 1 to 10,000,000")
    for name in ("invalid_rate", "equivocation_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise CliError(f"--{name.replace('_', '-')} must be from 0 to 1")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {out}: {exc.strerror or exc}") from exc
    keys = synth_keys(args.seed)
    cfg = SynthConfig(seed=args.seed, invalid_rate=args.invalid_rate,
                      equivocation_rate=args.equivocation_rate)
    events = records = 0
    tmp = out / f".events.jsonl.tmp{os.getpid()}"
    with open(tmp, "wb") as f, Progress(console=ctx.err_console,
                                        disable=not ctx.stderr.isatty()) as progress:
        task = progress.add_task("records", total=args.records)
        for rec in generate(keys, args.records, cfg):
            for ev in rec.events:
                f.write(ev.canonical_bytes() + b"\n")
                events += 1
            records += 1
            progress.advance(task)
    tmp.replace(out / "events.jsonl")
    (out / "network.toml").write_text(keys.spec_toml())
    (out / "corpus.json").write_text(json.dumps({
        "seed": args.seed, "records": records, "events": events,
        "invalid_rate": args.invalid_rate, "equivocation_rate": args.equivocation_rate,
        "test_keys": {"registry": keys.registry.public_key.hex(),
                      "importer": keys.importer.public_key.hex(),
                      "nodes": [k.public_key.hex() for k in keys.nodes],
                      "authors": [k.public_key.hex() for k in keys.authors]},
        "note": "TEST keys derived from the seed; never trust them outside tests."},
        indent=2) + "\n")
    ctx.stdout.write(f"wrote {events:,} events of {records:,} records to {out}/events.jsonl\n"
                     f"network spec trusting the test keys: {out}/network.toml\n"
                     f"import with: pithnode --network {out}/network.toml import "
                     f"{out}/events.jsonl\n")
    return 0
