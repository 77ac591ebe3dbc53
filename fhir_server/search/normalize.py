"""Value normalisation shared by indexing (write time) and query compilation (read time).

Search compares normalised forms on both sides, so each rule lives here once:

* strings (https://hl7.org/fhir/R4/search.html#string): matching is case- and accent-insensitive,
  so both sides are NFKD-decomposed, stripped of combining marks, case-folded and whitespace-collapsed
  (`Hélène` -> `helene`, `DUPONT` -> `dupont`). Folding at write time lets MongoDB serve
  starts-with searches from an index with an anchored, case-sensitive regex.
* dates (https://hl7.org/fhir/R4/search.html#date): every date is the half-open instant range its
  precision implies (`1985` = [1985-01-01, 1986-01-01)); values without a time zone are read in
  DEFAULT_TZ, which is what the spec asks ("the server's local time zone should be assumed").
  Bounds are rounded outwards to milliseconds, the resolution of BSON dates.
* numbers (https://hl7.org/fhir/R4/search.html#number): the range implied by the significant
  digits written (`100` = [99.5, 100.5), `100.00` = [99.995, 100.005)).
* references (https://hl7.org/fhir/R4/search.html#reference): `Type/id`, history suffix dropped.
"""

from __future__ import annotations

import os
import re
import unicodedata
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation

UTC = timezone.utc


def _default_tz() -> tzinfo:
    # Changing this after data was indexed shifts the ranges of zone-less values: reindex then.
    name = os.environ.get("FHIR_SEARCH_TIMEZONE", "UTC")
    if name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


DEFAULT_TZ: tzinfo = _default_tz()
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


# --- strings -------------------------------------------------------------------------------------

def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded, spaces collapsed."""
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def exact(text: str) -> str:
    """:exact compares what was written; NFC only so that composed and decomposed accents are equal."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


# --- tokens --------------------------------------------------------------------------------------

def token_entries(system: str | None, code: str | None) -> list[str]:
    """Equality keys of one coded value, one per query form of https://hl7.org/fhir/R4/search.html#token.

    `code` and `system|code` match directly; `|code` (explicitly no system) only exists for values
    without a system; `system|` matches any code of the system. Storing all forms keeps every token
    query a plain equality on one field, which MongoDB indexes and FerretDB can push down to SQL.
    """
    out: list[str] = []
    system = esc(system) if system else system
    if code:
        code = esc(code)
        out.append(code)
        out.append(f"{system}|{code}" if system else f"|{code}")
    if system:
        out.append(f"{system}|")
    return out


def esc(text: str) -> str:
    """Escape the separators of token entries (`|`, and `$` for composites) so they stay unambiguous."""
    if "\\" in text or "|" in text or "$" in text:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("$", "\\$")
    return text


# --- references ----------------------------------------------------------------------------------

_REL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ABS_REF = re.compile(r"^(https?://.+?)/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def reference_key(ref: str, base_url: str | None = None) -> str | None:
    """`Type/id` for a relative (or our own absolute) literal reference, the URL as is otherwise.

    Contained references (`#x`) point inside the resource itself and are not searchable by reference.
    """
    if not ref or ref.startswith("#"):
        return None
    m = _REL_REF.match(ref)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    m = _ABS_REF.match(ref)
    if m:
        if base_url and m.group(1).rstrip("/") == base_url.rstrip("/"):
            return f"{m.group(2)}/{m.group(3)}"
        return f"{m.group(1)}/{m.group(2)}/{m.group(3)}"
    return ref


def reference_type(ref: str) -> str | None:
    """The resource type a literal reference names (relative or absolute), for `resolve() is X`."""
    m = _REL_REF.match(ref) or None
    if m:
        return m.group(1)
    m = _ABS_REF.match(ref)
    return m.group(2) if m else None


# --- dates ---------------------------------------------------------------------------------------

_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _tz(text: str | None) -> tzinfo:
    if text is None:
        return DEFAULT_TZ
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"bad time zone {text}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _add_months(year: int, month: int, n: int) -> tuple[int, int]:
    month += n
    return year + (month - 1) // 12, (month - 1) % 12 + 1


def _clamp_utc(local: datetime) -> datetime:
    try:
        return local.astimezone(UTC)
    except (OverflowError, ValueError):
        return MIN_INSTANT if local.year < 5000 else MAX_INSTANT


def floor_ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def ceil_ms(value: datetime) -> datetime:
    if value.microsecond % 1000 == 0:
        return value
    try:
        return floor_ms(value) + timedelta(milliseconds=1)
    except OverflowError:
        return MAX_INSTANT


def date_range(text: str) -> tuple[datetime, datetime]:
    """The half-open UTC range [lo, hi) that a FHIR date/dateTime/instant covers at its precision.

    Raises ValueError for anything that is not one; `hh:mm` without seconds is accepted because
    search values commonly stop at minutes.
    """
    m = _DATE.match(text.strip())
    if not m:
        raise ValueError(f"not a FHIR date: {text!r}")
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    year = int(y)
    if year < 1:
        raise ValueError(f"bad year in {text!r}")
    zone = _tz(tz)
    try:
        if mo is None:
            lo = datetime(year, 1, 1, tzinfo=zone)
            hi_parts = (year + 1, 1, 1)
        elif d is None:
            month = int(mo)
            lo = datetime(year, month, 1, tzinfo=zone)
            ny, nm = _add_months(year, month, 1)
            hi_parts = (ny, nm, 1)
        else:
            lo = datetime(year, int(mo), int(d), tzinfo=zone)
            hi_parts = None
        if hh is None:
            if hi_parts is not None:
                if hi_parts[0] > 9999:
                    return _clamp_utc(lo), MAX_INSTANT
                hi = datetime(*hi_parts, tzinfo=zone)
            else:
                hi = lo + timedelta(days=1)
        else:
            h, minute = int(hh), int(mi)
            if ss is None:
                lo = lo.replace(hour=h, minute=minute)
                hi = lo + timedelta(minutes=1)
            else:
                sec = int(ss)
                if sec == 60:  # leap second, allowed by the FHIR regex: the last second of the minute
                    sec = 59
                lo = lo.replace(hour=h, minute=minute, second=sec)
                if frac:
                    digits = frac[:6]
                    lo = lo.replace(microsecond=int(digits.ljust(6, "0")))
                    step = 10 ** (6 - len(digits)) if len(frac) <= 6 else 1
                    hi = lo + timedelta(microseconds=step)
                else:
                    hi = lo + timedelta(seconds=1)
    except OverflowError:
        return MIN_INSTANT, MAX_INSTANT
    return floor_ms(_clamp_utc(lo)), ceil_ms(_clamp_utc(hi))


def period_range(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """A Period is the range from its start's low bound to its end's high bound, open where missing."""
    lo = date_range(start)[0] if start else MIN_INSTANT
    hi = date_range(end)[1] if end else MAX_INSTANT
    return lo, hi


# --- numbers -------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def number_range(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """(value, lo, hi): the value and the half-open range implied by its significant digits."""
    if not _NUMBER.match(text.strip()):
        raise ValueError(f"not a number: {text!r}")
    try:
        value = Decimal(text.strip())
    except InvalidOperation as e:  # pragma: no cover - the regex already filters
        raise ValueError(f"not a number: {text!r}") from e
    exponent = value.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1)
    return value, value - half, value + half
