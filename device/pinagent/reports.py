"""Pin-failure reports: a bounded ring in flash, deduplicated, with counters that outlive it.

Reports are read out over serial (the update service's READ_REPORTS, then ACK_REPORTS) and
never sent over the network: certainly not over the pinned connection they report on, which
is the one connection known to be intercepted or misconfigured. Nothing erases them: the serial
console has no authentication, and a man in the middle with a cable must not be able to wipe
his own traces. A host acknowledges what it has read (ack(seq)); acknowledged entries stay until
newer reports overwrite them, and are the first to go when the ring is full.

Fields follow the HPKP report (RFC 7469 section 3) and TrustKit's, so existing report tooling
reads them: "date-time" (RFC 3339 UTC, first seen), "hostname", "port", "noted-hostname" (the
rule's host pattern), "include-subdomains", "enforce-pinning", "effective-expiration-date",
"known-pins" (HPKP syntax: pin-sha256="<base64>"), "served-certificate-chain" (per depth, leaf
first: {"depth", "pin-sha256", "subject"}) and "validation-result" (the verdict's reason), plus
"allowed", "chain-verified", "clock-trusted", "bundle-version", "device-id", and the ring's own
"key", "count", "last-seen" and "seq".

On flash (reports.bin) and on the wire the log is JSON lines:
    {"fleetpin-reports":1,"total":T,"dropped":D,"acked":A}   counters, kept when entries go
    {...one report...}                                   least recently seen first
"total" counts every failure recorded; each entry's "seq" is the total when it was last seen,
so sequence numbers only rise; "acked" is the highest the host acknowledged: entries with a
higher seq are pending (an entry from an older agent, without seq, is pending). Bounded by
max_bytes (the whole file) and max_entries; when full, the least recently seen acknowledged
entry is dropped, else the least recently seen one, and counted. A report with the same key as
a stored one (SHA-256 of hostname, port, noted-hostname, validation-result and the served
chain's pins: no timestamps) bumps that entry's count, last-seen and seq instead of adding one. Every change rewrites the file atomically (temp +
rename), so a power cut leaves the old log or the new one. Loading never raises: an unreadable
log starts empty, a bad line is skipped.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import binascii
import hashlib
import json

from .store import ROOT

REPORTS = "reports.bin"
REPORTS_NEW = "reports.new"
FORMAT = const(1)
MAX_BYTES = const(4096)
MAX_ENTRIES = const(16)
MAX_CHAIN = const(4)  # certificates per report (leaf first)
MAX_SUBJECT = const(48)  # characters of a subject kept
MAX_KNOWN = const(8)  # known pins per report

ADDED = "added"
MERGED = "merged"
DROPPED = "dropped"  # larger than the whole ring: only counted

_SEP = (",", ":")


class ReportError(Exception):
    """A report that is not a JSON object; `reason` says so."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def rfc3339(t):
    """POSIX seconds -> "YYYY-MM-DDTHH:MM:SSZ" (no clock read; proleptic Gregorian, UTC)."""
    if t is None:
        return None
    days, s = divmod(int(t), 86400)
    z = days + 719468  # days since 0000-03-01 (H. Hinnant's civil_from_days)
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)


def _subject(subjects, depth):
    if subjects is None:
        return None
    if isinstance(subjects, dict):
        s = subjects.get(depth)
    elif 0 <= depth < len(subjects):
        s = subjects[depth]
    else:
        s = None
    return None if s is None else str(s)[:MAX_SUBJECT]


def make_report(verdict, port, subjects, now, bundle_version, device_id):
    """A report from a verdict's to_obj() dict. subjects: per-depth subject strings (a list
    indexed by depth or a dict depth -> subject; None if unknown); now: POSIX seconds."""
    rule = verdict.get("rule") or {}
    served = []
    for item in (verdict.get("chain") or ())[:MAX_CHAIN]:
        entry = {"depth": item["depth"], "pin-sha256": item["pin"]}
        s = _subject(subjects, item["depth"])
        if s is not None:
            entry["subject"] = s
        served.append(entry)
    known = []
    for p in (rule.get("pins") or ())[:MAX_KNOWN]:
        known.append('pin-sha256="%s"' % p["pin"])
    return {
        "date-time": rfc3339(now),
        "hostname": verdict.get("host"),
        "port": port,
        "noted-hostname": rule.get("host"),
        "include-subdomains": bool(rule.get("include_subdomains")),
        "enforce-pinning": rule.get("enforce"),
        "effective-expiration-date": rfc3339(rule.get("expires")),
        "known-pins": known,
        "served-certificate-chain": served,
        "validation-result": verdict.get("reason"),
        "allowed": verdict.get("allowed"),
        "chain-verified": verdict.get("verified"),
        "clock-trusted": verdict.get("clock_trusted"),
        "bundle-version": bundle_version,
        "device-id": device_id,
    }


def report_key(report):
    """16 hex digits identifying a failure, without timestamps or counters."""
    parts = [
        str(report.get("hostname")),
        str(report.get("port")),
        str(report.get("noted-hostname")),
        str(report.get("validation-result")),
    ]
    for c in report.get("served-certificate-chain") or ():
        parts.append(str(c.get("pin-sha256")) if isinstance(c, dict) else str(c))
    digest = hashlib.sha256("\n".join(parts).encode()).digest()
    return binascii.hexlify(digest[:8]).decode()


def _line(obj):
    return json.dumps(obj, separators=_SEP).encode()


class Reports:
    """The ring over an injected store.FS. add(report) -> ADDED/MERGED/DROPPED; read() -> list
    of dicts; export() -> the log's bytes (what READ_REPORTS serves); ack(seq); stats()."""

    def __init__(self, fs, root=ROOT, max_bytes=MAX_BYTES, max_entries=MAX_ENTRIES):
        self.fs = fs
        self.path = root + "/" + REPORTS
        self.tmp = root + "/" + REPORTS_NEW
        self.root = root
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries = None  # [[key, line, seq], ...], least recently seen first; lines, not
        # dicts, so what stays on the heap is about the size of the file
        self.total = 0
        self.dropped = 0
        self.acked = 0
        self.bad_lines = 0  # lines skipped at load (not persisted)
        self.write_errors = 0  # failed saves since boot (not persisted; the next save retries)

    # ---- loading

    def _load(self):
        if self._entries is not None:
            return
        self._entries = []
        try:
            data = self.fs.read(self.path, self.max_bytes * 2)
        except Exception:  # missing (the normal first boot), oversized or unreadable: start empty
            return
        first = True
        for raw in data.split(b"\n"):
            if not raw:
                continue
            try:
                obj = json.loads(raw)
            except Exception:  # ValueError on CPython and MicroPython alike
                obj = None
            if first:
                first = False
                if isinstance(obj, dict) and obj.get("fleetpin-reports") == FORMAT:
                    self.total = _count(obj.get("total"))
                    self.dropped = _count(obj.get("dropped"))
                    self.acked = min(_count(obj.get("acked")), self.total)
                    continue
            if isinstance(obj, dict) and isinstance(obj.get("key"), str) and _count(obj.get("count")) > 0:
                # no seq (an older agent's entry): pending, as if just recorded
                self._entries.append([obj["key"], raw, _count(obj.get("seq")) or self.total + 1])
            else:
                self.bad_lines += 1

    # ---- encoding

    def _header(self):
        return _line({"fleetpin-reports": FORMAT, "total": self.total, "dropped": self.dropped, "acked": self.acked})

    def _size(self):
        n = len(self._header()) + 1
        for e in self._entries:
            n += len(e[1]) + 1
        return n

    def export(self):
        """The log as stored: header line, then one line per entry (JSON lines)."""
        self._load()
        parts = [self._header()]
        for e in self._entries:
            parts.append(e[1])
        parts.append(b"")
        return b"\n".join(parts)

    def _save(self):
        try:
            self.fs.ensure_dir(self.root)
            self.fs.write_atomic(self.path, self.tmp, (self.export(),))
            return True
        except Exception:  # the entry stays in RAM; the next save writes it
            self.write_errors += 1
            return False

    # ---- the API

    def add(self, report):
        """Records a failure; never raises for storage (see write_errors)."""
        if not isinstance(report, dict):
            raise ReportError("a report is a dict, not %s" % type(report).__name__)
        self._load()
        self.total += 1
        key = report_key(report)
        entries = self._entries
        found = None
        for i in range(len(entries)):
            if entries[i][0] == key:
                found = entries.pop(i)
                break
        if found is not None:
            obj = json.loads(found[1])
            obj["count"] = _count(obj.get("count")) + 1
            obj["last-seen"] = report.get("date-time")
            obj["seq"] = found[2] = self.total
            found[1] = _line(obj)
            entries.append(found)
            # A repeat of a known failure is kept in RAM (READ_REPORTS serves it) and written to
            # flash only at counts 2, 4, 8, ...: an app retrying once a second behind an
            # intercepting proxy must not rewrite the log (up to 4 KB) every second. A power cut
            # loses at most half of one entry's repeat count.
            persist = not obj["count"] & (obj["count"] - 1)
            status = MERGED
        else:
            obj = dict(report)
            obj["key"] = key
            obj["count"] = 1
            obj["last-seen"] = report.get("date-time")
            obj["seq"] = self.total
            line = _line(obj)
            if len(line) + len(self._header()) + 2 > self.max_bytes:
                self.dropped += 1
                self._save()
                return DROPPED
            entries.append([key, line, self.total])
            status = ADDED
            persist = True
        while len(entries) > self.max_entries or self._size() > self.max_bytes:
            entries.pop(self._victim())
            self.dropped += 1
            persist = True
        if persist:
            self._save()
        return status

    def read(self):
        """The stored reports, least recently seen first (dicts with count and last-seen)."""
        self._load()
        return [json.loads(e[1]) for e in self._entries]

    def _victim(self):
        # the least recently seen acknowledged entry, else the least recently seen (index 0)
        for i in range(len(self._entries)):
            if self._entries[i][2] <= self.acked:
                return i
        return 0

    def ack(self, seq):
        """Acknowledges every entry up to sequence number `seq` (what the host has read): they
        stay, and are no longer pending. Never goes back, never past `total`; written to flash
        only when it moved. Returns the acknowledged sequence number."""
        self._load()
        seq = min(_count(seq), self.total)
        if seq > self.acked:
            self.acked = seq
            self._save()
        return self.acked

    def pending(self):
        """Entries not acknowledged yet."""
        self._load()
        n = 0
        for e in self._entries:
            if e[2] > self.acked:
                n += 1
        return n

    def stats(self):
        self._load()
        return {
            "entries": len(self._entries),
            "pending": self.pending(),
            "acked": self.acked,
            "bytes": self._size(),
            "total": self.total,
            "dropped": self.dropped,
            "bad_lines": self.bad_lines,
            "write_errors": self.write_errors,
            "max_bytes": self.max_bytes,
            "max_entries": self.max_entries,
        }


def _count(v):
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
