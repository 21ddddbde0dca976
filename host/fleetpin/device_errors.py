"""Every error the agent can give, in one table: its name (as the device says it), what it
means in words a technician understands, what to do next, and whether it is a refusal (the
device checked what it was sent and said no; it is unchanged) rather than a failure.

Two kinds of names: the serial protocol's error names (pinagent.service.ERROR_NAMES, which
PROTOCOL.md lists) and the bundle decoder's errors (pinagent.bundle's Bundle*Error classes),
which the device and `fleetpin bundle verify` raise alike. A test holds this table against both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceError:
    name: str
    words: str
    hint: str
    refusal: bool = False


_ROWS = (
    # serial protocol
    DeviceError("no_session", "the device lost the session (it restarted or timed out)", "run the command again"),
    DeviceError("version", "the device speaks another protocol version",
                "update fleetpin or the agent so both speak the same protocol"),
    DeviceError("bad_request", "the device could not parse a request", "update fleetpin to match the agent"),
    DeviceError("unknown_op", "the device does not know this request", "update the agent firmware"),
    DeviceError("unsupported", "this agent does not implement that request", "update the agent firmware"),
    DeviceError("no_write", "no upload is in progress on the device", "run the update again"),
    DeviceError("range", "a piece of the upload fell outside the bundle", "run the update again"),
    DeviceError("incomplete", "the transfer was cut short", "run the command again"),
    DeviceError("digest", "the transfer was corrupted", "run the command again"),
    DeviceError("signature", "the device does not trust the key that signed this bundle",
                "sign it with a key of the device's signer set (fleetpin bundle inspect)", refusal=True),
    DeviceError("bundle", "the bundle is malformed or not valid on the device",
                "check it with fleetpin bundle inspect", refusal=True),
    DeviceError("rollback", "the device has this version or a newer one",
                "build the bundle with a higher version", refusal=True),
    DeviceError("fleet", "this bundle is for another fleet",
                "build one for the device's fleet (fleetpin device info shows it)", refusal=True),
    DeviceError("storage", "the device could not write its flash",
                "retry; if it persists the flash may be failing"),
    DeviceError("no_space", "the device's flash is full",
                "reports or the previous bundle may need clearing", refusal=True),
    DeviceError("changed", "the device's data changed while it was being read", "run the command again"),
    DeviceError("connect", "the device could not reach the host, refused its certificate, or has no rule for it",
                "check the pins and the network; TEST_CONNECT reaches only hosts the bundle has a rule for"),
    DeviceError("internal", "the agent hit an internal error", "note the message, then run fleetpin device info"),
    # the bundle decoder (device and host)
    DeviceError("BundleTooLarge", "the bundle is larger than a device accepts", "fewer domains or CA certificates",
                refusal=True),
    DeviceError("BundleMalformed", "the file is damaged or not a fleetpin bundle",
                "rebuild it with `fleetpin bundle build`", refusal=True),
    DeviceError("BundleSignatureError", "no trusted key signed this bundle",
                "sign with a key of the --trust signer set, of the bundle's channel", refusal=True),
    DeviceError("BundleThresholdError", "too few of the trusted keys signed this bundle (a signer-set change "
                "needs the set's rotation threshold, 2 by default: the everyday and the backup key)",
                "sign it with more keys of the device's signer set (fleetpin bundle verify shows who signed)",
                refusal=True),
    DeviceError("BundleSignerKeyError", "the new signer set holds an invalid key, or one key twice",
                "rebuild the signer set with `fleetpin key signers` from NAME.pub.json files", refusal=True),
    DeviceError("BundleWrongFleet", "the bundle is for another fleet", "build it with the devices' --fleet",
                refusal=True),
    DeviceError("BundleRollback", "the bundle is older than the installed one",
                "build it with a --version above the installed one", refusal=True),
    DeviceError("BundleSameVersion", "the bundle has the installed version", "build it with a higher --version",
                refusal=True),
    DeviceError("BundleFromFuture", "the bundle was issued in the future of the checking clock",
                "check the signing computer's clock, or --now", refusal=True),
    DeviceError("BundleSchemaError", "this agent cannot read the bundle's contents",
                "rebuild it with this fleetpin version", refusal=True),
)

ERRORS: dict[str, DeviceError] = {row.name: row for row in _ROWS}


def hint_for(name: str) -> str | None:
    row = ERRORS.get(name)
    return row.hint if row else None


def is_refusal(name: str | None) -> bool:
    row = ERRORS.get(name or "")
    return bool(row and row.refusal)
