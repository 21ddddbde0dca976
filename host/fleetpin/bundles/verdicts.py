"""The device's verdict reasons (pinagent.policy) in words, and what to do about each: one
table for every command that reports a verdict (check, preflight)."""

from __future__ import annotations

from pinagent import connect as dev_connect
from pinagent import policy as dev_policy

REASON_TEXT: dict[str, str] = {
    dev_policy.MATCHED: "a pinned key is in the chain",
    dev_policy.MISMATCH: "no pinned key in the chain, and the rule is enforced",
    dev_policy.CLOCK_UNTRUSTED: "no pinned key in the chain; the clock is unknown or below the time floor, "
    "so the device cannot tell whether the pins expired (and CA validation would decide)",
    dev_policy.REPORT_ONLY_MISMATCH: "no pinned key in the chain, but the rule is report-only: CA validation decided",
    dev_policy.EXPIRED_FALLBACK: "the pins expired and on_expiry is fallback: CA validation decided",
    dev_policy.EXPIRY_UNCONFIRMED: "no pinned key in the chain; the clock says the pins expired, but no "
    "authenticated time (a signed bundle's issue time, a pinned server's time) confirms it, so they stay in force",
    dev_policy.NO_POLICY: "no rule for this host: CA validation decided",
    dev_policy.NO_POLICY_BLOCKED: "no rule for this host, and unpinned = \"block\"",
    dev_policy.UNVERIFIED: "CA validation decides here, and the chain was not verified",
    dev_policy.INVALID_HOST: "not a host name or a canonical IP literal (IPv4 as a dotted quad, IPv6 without port, "
    "brackets or zone): devices refuse it before any lookup",
    dev_connect.TLS_FAILED: "the chain does not validate against the CA certificates the device trusts: "
    "its TLS handshake fails before any pin counts",
}


def reason_text(reason: str) -> str:
    """The reason in words ('' for a reason this table does not know)."""
    return REASON_TEXT.get(reason, "")


def hint_for(reason: str) -> str:
    """What to do next when a device refuses a chain for `reason`."""
    if reason in (dev_policy.MISMATCH, dev_policy.CLOCK_UNTRUSTED):
        return "if the server's key changed on purpose, add its pin to the policy before deploying the key"
    if reason == dev_policy.EXPIRY_UNCONFIRMED:
        return ("if the pins really expired, install a newer signed bundle (its issue time is authenticated), "
                "or let the application report a pinned server's time (agent.server_time)")
    if reason == dev_policy.UNVERIFIED:
        return "pass --ca with the CA certificates your bundle ships, or pin the leaf key"
    if reason == dev_connect.TLS_FAILED:
        return "ship the CA this chain ends in ([bundle] ca_certs), or fix the server's chain (host name, dates, intermediates)"
    if reason == dev_policy.NO_POLICY_BLOCKED:
        return "add a [[domain]] for this host, or set unpinned = \"ca\" in [defaults]"
    return "see the verdict above"
