"""Coverage-guided fuzzing (atheris / libFuzzer) of the byte-level decoders of outside input.

    python bench/fuzz_atheris.py TARGET [libFuzzer flags...]
    python bench/fuzz_atheris.py decode_frame -atheris_runs=100000
    python bench/fuzz_atheris.py --list

The targets are the Hypothesis fuzz targets of ``tests/fuzz`` (same ``run`` functions, same
typed errors, same known-bug list), so a crash here is a crash there: copy the input libFuzzer
writes (``crash-<sha1>`` in the artifact directory it prints) to
``tests/fuzz/corpus/<TARGET>/<name>.bin`` and the corpus replay test runs it from then on.
Known (reported, unfixed) bugs are tolerated unless ``--strict`` is given.

The run starts from a fresh temporary corpus seeded with the target's seeds and with
``tests/fuzz/corpus/<TARGET>/*.bin``; nothing is written into the repository. Needs atheris
(``pip install atheris==3.0.0``; manylinux wheels for CPython 3.11 on x86_64, no compiler).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: target name -> (test module defining it, name of the Target object, seed list name)
TARGETS: dict[str, tuple[str, str, str]] = {
    "decode_frame": ("tests.fuzz.test_fuzz_wire", "DECODE_FRAME", "FRAMES"),
    "decode_gossip": ("tests.fuzz.test_fuzz_wire", "DECODE_GOSSIP", "GOSSIP"),
    "gossip_validate": ("tests.fuzz.test_fuzz_wire", "GOSSIP_VALIDATE", "GOSSIP"),
    "negentropy_decode": ("tests.fuzz.test_fuzz_wire", "NEG_DECODE", "NEG_MESSAGES"),
    "negentropy_responder": ("tests.fuzz.test_fuzz_wire", "NEG_RESPONDER", "NEG_MESSAGES"),
    "negentropy_initiator": ("tests.fuzz.test_fuzz_wire", "NEG_INITIATOR", "NEG_MESSAGES"),
    "decode_json": ("tests.fuzz.test_fuzz_documents", "DECODE_JSON", "SEED_BYTES"),
    "decode_document": ("tests.fuzz.test_fuzz_documents", "DECODE_DOCUMENT", "SEED_BYTES"),
    "verify_bytes": ("tests.fuzz.test_fuzz_documents", "VERIFY_BYTES", "SEED_BYTES"),
    "decode_audit_message": ("tests.fuzz.test_fuzz_audit_checkpoint", "DECODE_AUDIT",
                             "AUDIT_MESSAGES"),
    "parse_note": ("tests.fuzz.test_fuzz_audit_checkpoint", "PARSE_NOTE", "NOTES"),
}


def _usage() -> int:
    sys.stderr.write(__doc__ or "")
    sys.stderr.write("\ntargets: " + ", ".join(sorted(TARGETS)) + "\n")
    return 2


def main(argv: Sequence[str]) -> int:
    args = list(argv[1:])
    if not args or args[0] in ("-h", "--help"):
        return _usage()
    if args[0] == "--list":
        print("\n".join(sorted(TARGETS)))
        return 0
    strict = "--strict" in args
    args = [a for a in args if a != "--strict"]
    name, flags = args[0], args[1:]
    if name not in TARGETS:
        sys.stderr.write(f"unknown target {name!r}\n")
        return _usage()
    try:
        import atheris
    except ImportError:
        sys.stderr.write("atheris is not installed: pip install atheris==3.0.0\n")
        return 2

    sys.path.insert(0, str(ROOT))
    module_name, target_name, seeds_name = TARGETS[name]
    with atheris.instrument_imports(include=["pithnode"]):
        import importlib

        module = importlib.import_module(module_name)
    fuzz = importlib.import_module("tests.fuzz")
    target = getattr(module, target_name)
    seeds: list[bytes] = list(getattr(module, seeds_name))
    check: Callable[..., object] = fuzz.check

    corpus = Path(tempfile.mkdtemp(prefix=f"pithnode-atheris-{name}-"))
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    for path in sorted((ROOT / "tests" / "fuzz" / "corpus" / name).glob("*.bin")):
        (corpus / path.name).write_bytes(path.read_bytes())
    artifacts = corpus.parent / f"{corpus.name}-artifacts"
    artifacts.mkdir()
    print(f"corpus: {corpus}\nartifacts (crashes): {artifacts}/", flush=True)

    def one_input(data: bytes) -> None:
        check(target, data, tolerate_known=not strict)

    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.append(f"-artifact_prefix={artifacts}/")
    atheris.Setup([argv[0], *flags, str(corpus)], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
