"""Pith Numbers, short forms, canonical text hashes, key fingerprints and aliases.

Every rule here was reproduced on Pith's real data (see docs/PROTOCOL.md, "Identifiers").
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .canonical import canonical_json
from .errors import InputError

__all__ = [
    "ALIAS_KINDS",
    "PithNumber",
    "abstract_canon_sha256",
    "fingerprint_b32",
    "fingerprint_hex",
    "normalise_alias",
    "parse_pith_number",
    "pith_number_for_record",
    "record_year",
    "title_canon_sha256",
]

SUFFIX_LEN = 26
SHORT_LENGTHS = (8, 12, 16)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_SUFFIX_RE = re.compile(r"[A-Z2-7]+")
_YEAR_RE = re.compile(r"[0-9]{4}")
_SUBMITTED_RE = re.compile(r"([0-9]{4})-[0-9]{2}-[0-9]{2}T")

#: Alias kinds a record may carry, in the order lookups try them.
ALIAS_KINDS = ("arxiv", "arxiv_version", "doi", "pith_short_8", "pith_short_12", "pith_short_16")


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class PithNumber:
    """A full (``year`` set, 26-character suffix) or short (8/12/16-character) Pith Number."""

    suffix: str
    year: int | None = None

    def __post_init__(self) -> None:
        if not _SUFFIX_RE.fullmatch(self.suffix):
            raise InputError("bad_pith_number", f"not a base32 suffix: {self.suffix!r}")
        if self.year is None:
            if len(self.suffix) not in (*SHORT_LENGTHS, SUFFIX_LEN):
                raise InputError("bad_pith_number", f"bad suffix length {len(self.suffix)}")
        elif len(self.suffix) != SUFFIX_LEN:
            raise InputError("bad_pith_number", "a full Pith Number has a 26-character suffix")
        elif not 1000 <= self.year <= 9999:
            raise InputError("bad_pith_number", f"bad year {self.year}")

    @property
    def is_full(self) -> bool:
        return self.year is not None

    def __str__(self) -> str:
        if self.year is None:
            return f"pith:{self.suffix}"
        return f"pith:{self.year}:{self.suffix}"

    @property
    def short(self) -> str:
        """The 8-character short form, ``pith:XXXXXXXX``."""
        return f"pith:{self.suffix[:8]}"

    def matches(self, other: PithNumber) -> bool:
        """True when one of the two is a prefix form of the other (years must agree if set)."""
        if self.year is not None and other.year is not None and self.year != other.year:
            return False
        a, b = self.suffix, other.suffix
        return a.startswith(b) or b.startswith(a)


def parse_pith_number(text: str) -> PithNumber:
    """Parse ``pith:YEAR:SUFFIX``, ``pith:SHORT`` or a bare suffix (case-insensitive)."""
    if not isinstance(text, str) or len(text) > 64:
        raise InputError("bad_pith_number", "a Pith Number is a short string")
    return _parse_pith_number(text)


@lru_cache(maxsize=1024)  # ingest parses each event's subject several times
def _parse_pith_number(text: str) -> PithNumber:
    t = text.strip()
    if t.lower().startswith("pith:"):
        t = t[5:]
    parts = t.split(":")
    if len(parts) == 2:
        year_s, suffix = parts
        if not _YEAR_RE.fullmatch(year_s):
            raise InputError("bad_pith_number", f"bad year in {text!r}")
        return PithNumber(suffix.upper(), int(year_s))
    if len(parts) == 1 and parts[0]:
        return PithNumber(parts[0].upper())
    raise InputError("bad_pith_number", f"not a Pith Number: {text!r}")


def record_year(canonical_record: Any) -> int:
    """Year of ``canonical_record.metadata.submitted_at`` (not of the arXiv id)."""
    try:
        submitted = canonical_record["metadata"]["submitted_at"]
    except (KeyError, TypeError) as exc:
        raise InputError("bad_record", "canonical record lacks metadata.submitted_at") from exc
    m = _SUBMITTED_RE.match(submitted) if isinstance(submitted, str) else None
    if m is None:
        raise InputError("bad_record", f"bad submitted_at {submitted!r}")
    return int(m.group(1))


def pith_number_for_record(canonical_record: Any) -> PithNumber:
    """Derive the Pith Number of a canonical record."""
    digest = hashlib.sha256(canonical_json(canonical_record)).digest()
    return PithNumber(_b32(digest)[:SUFFIX_LEN], record_year(canonical_record))


def _canon_text_sha256(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def title_canon_sha256(title: str) -> str:
    """Pith's title hash: lower-case, whitespace collapsed, UTF-8, SHA-256 hex."""
    return _canon_text_sha256(title)


def abstract_canon_sha256(abstract: str) -> str:
    return _canon_text_sha256(abstract)


def fingerprint_hex(public_key: bytes) -> str:
    """First 16 bytes of SHA-256 of the raw public key, hex (``public_key_fingerprint``)."""
    return hashlib.sha256(public_key).digest()[:16].hex()


def fingerprint_b32(public_key: bytes) -> str:
    """RFC 4648 base32 of SHA-256 of the raw public key, first 26 characters."""
    return _b32(hashlib.sha256(public_key).digest())[:SUFFIX_LEN]


_ARXIV_NEW = re.compile(r"([0-9]{4}\.[0-9]{4,5})(v[0-9]+)?")
_ARXIV_OLD = re.compile(r"([a-z][a-z.-]*(?:\.[A-Z]{2})?/[0-9]{7})(v[0-9]+)?", re.IGNORECASE)
_DOI = re.compile(r"10\.[0-9]{4,9}/\S+")


def normalise_alias(text: str) -> tuple[str, str]:
    """Classify a lookup string and normalise it to ``(alias_kind, alias_value)``.

    Accepts arXiv ids (new and old style, optional ``arXiv:`` prefix and version), DOIs (bare,
    ``doi:`` or ``https://doi.org/``), and short Pith Numbers. Full Pith Numbers are kind
    ``pith``.
    """
    if not isinstance(text, str) or not text.strip() or len(text) > 512:
        raise InputError("bad_alias", "an identifier is a non-empty string")
    t = text.strip()
    low = t.lower()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if low.startswith(prefix):
            t, low = t[len(prefix):], low[len(prefix):]
            break
    if _DOI.fullmatch(t):
        return "doi", low
    if low.startswith("arxiv:"):
        t = t[6:]
    for pat in (_ARXIV_NEW, _ARXIV_OLD):
        m = pat.fullmatch(t)
        if m:
            base = m.group(1)
            if pat is _ARXIV_OLD:
                archive, num = base.split("/")
                base = f"{archive.lower()}/{num}"
            if m.group(2):
                return "arxiv_version", base + m.group(2).lower()
            return "arxiv", base
    pn = parse_pith_number(t)
    if pn.is_full:
        return "pith", str(pn)
    return f"pith_short_{len(pn.suffix)}" if len(pn.suffix) != SUFFIX_LEN else "pith", pn.suffix
