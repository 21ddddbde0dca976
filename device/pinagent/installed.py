"""The installed bundle, decoded, kept beside it (/fleetpin/bundle.idx): a boot reads it instead of
loading the bundle decoder (pinagent.bundle and pinagent.policy_load, the largest code a boot
needed) and parsing and validating the payload again, so a wake is quicker and its heap peak lower.

    save(fs, root, b, signers, bundle, v)   after a decode of the slot (signers, bundle): b its
                                            pinagent.bundle.Bundle, v its store.Verified
    load(fs, root, signers, bundle, fleet)  a store.Verified for that slot, or None

Written by a boot that found none, or another slot's (the first boot after provisioning or after
an update, a recovery): one small write per update. The decoded form of exactly that slot, named by the
SHA-256 of the slot's signer set and bundle. A boot uses it only if the name matches the slot it
loaded (whose own digest pinagent.store has just checked) and it is for the device's fleet;
anything else (missing, another slot's, torn, damaged, another format) is ignored and the bundle
is decoded as before. It adds no trust of its own: it is written only from a bundle the agent
decoded, and whoever can rewrite it to match a slot can rewrite the slot (and the agent).

Format: JSON (parsed in C): {"f": FORMAT, "k": name (hex), "fleet", "version", "issued",
"digest" (hex), "report": {...}, "certs": [[offset, length], ...] (the CA certificates, in the
bundle), "next": the signer set trusted after it (text; null: the slot's), "new_keys" (hex; null:
no new set), "keys" (hex: who signed it, pinagent.store's vouchers), "unpinned", "clock_lead", "rules": [[index, host, base, kind, include_subdomains,
[pin (hex), ...], [label, ...], enforce, expires, on_expiry], ...]}.
"""

import hashlib
import json

from .policy import Policy, Rule
from .store import INDEX, INDEX_NEW, Verified

FORMAT = 1
_MAX = 49152  # a policy at its 16 KB limit, pins in hex


class Installed:
    """The fields of a decoded bundle (pinagent.bundle.Bundle) that the agent reads after boot."""

    __slots__ = ("fleet", "version", "issued", "digest", "report", "policy", "ca_certs")


def _name(signers, bundle):
    h = hashlib.sha256(signers)
    h.update(bundle)
    return h.digest().hex()


def save(fs, root, b, signers, bundle, v):
    """Best effort: a flash that refuses it costs the next boot a decode, nothing else."""
    try:
        rules = []
        for r in b.policy.rules:
            rules.append([r.index, r.host, r.base, r.kind, r.include_subdomains, [p.hex() for p in r.pins], r.labels,
                          r.enforce, r.expires, r.on_expiry])
        from .bundle import parse_envelope  # loaded: b was just decoded

        certs = parse_envelope(bundle).spans
        obj = {"f": FORMAT, "k": _name(signers, bundle), "fleet": b.fleet, "version": b.version, "issued": b.issued,
               "digest": b.digest.hex(), "report": b.report, "certs": certs,
               "next": None if v.new_keys is None else bytes(v.next_signers).decode(),
               "new_keys": None if v.new_keys is None else v.new_keys.hex(), "keys": v.keys.hex(),
               "unpinned": b.policy.unpinned,
               "clock_lead": b.policy.clock_lead, "rules": rules}
        fs.write_atomic(root + "/" + INDEX, root + "/" + INDEX_NEW, (json.dumps(obj).encode(),))
    except Exception:
        pass


def load(fs, root, signers, bundle, fleet):
    try:
        o = json.loads(fs.read(root + "/" + INDEX, _MAX))
        if o["f"] != FORMAT or o["k"] != _name(signers, bundle) or (fleet is not None and o["fleet"] != fleet):
            return None
        p = Policy(o["unpinned"], o["clock_lead"])
        for f in o["rules"]:
            r = Rule()
            r.index, r.host, r.base, r.kind, r.include_subdomains, pins, r.labels, r.enforce, r.expires, r.on_expiry = f
            r.pins = [bytes.fromhex(x) for x in pins]
            p.add(r)
        b = Installed()
        b.fleet, b.version, b.issued, b.report, b.policy = o["fleet"], o["version"], o["issued"], o["report"], p
        b.digest = bytes.fromhex(o["digest"])
        mv = memoryview(bundle)
        b.ca_certs = [mv[at:at + n] for at, n in o["certs"]]
        new_keys = o["new_keys"]
        nxt = signers if o["next"] is None else o["next"].encode()
        return Verified(b, b.version, b.issued, nxt, bytes.fromhex(o["keys"]),
                        None if new_keys is None else bytes.fromhex(new_keys))
    except Exception:  # missing, torn, damaged, another format: decode the bundle instead
        return None
