"""The CA certificate a live server's chain chains to: what a bundle's `[bundle] ca_certs` must
carry for devices to validate that server (`fleetpin bundle fetch-cas`, the fix for lint's FP010).

The chain is fetched as served (fleetpin.pki.certs.fetch_chain), then validated here with
cryptography's verifier, host name included, against the system's CA store or only the CA
certificates of --ca FILE. The verifier returns the chain it built, ending at the trust anchor
it found in that store, which the server usually does not send: that anchor is what devices need
(the ESP32 has no CA store of its own; an anchor validates every leaf and intermediate below it,
so it survives the server's certificate renewals)."""

from __future__ import annotations

import base64
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.pki.certs import HostTarget, fetch_chain, host_name, load_certificates, raw_spki_of_tbs


@dataclass(frozen=True)
class Anchor:
    target: HostTarget
    der: bytes
    subject: str
    pin: str
    not_after: int  # POSIX seconds
    chain_length: int  # certificates in the validated chain, anchor included

    @property
    def pem(self) -> str:
        body = base64.encodebytes(self.der).decode().replace("\n", "")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class TrustStore:
    certificates: list[x509.Certificate]
    name: str  # "the system CA store (/etc/ssl/certs/ca-certificates.crt)", "--ca roots.pem"


def system_store() -> TrustStore:
    """This machine's CA store, where OpenSSL (and Python's ssl) find it; $SSL_CERT_FILE and
    $SSL_CERT_DIR override it, as for every OpenSSL program."""
    paths = ssl.get_default_verify_paths()
    found: list[x509.Certificate] = []
    names: list[str] = []
    if paths.cafile:
        found += _pem_certificates(Path(paths.cafile))
        names.append(paths.cafile)
    if paths.capath and Path(paths.capath).is_dir():
        for entry in sorted(Path(paths.capath).iterdir()):
            if entry.is_file() and not entry.name.endswith((".crl", ".r0")):
                found += _pem_certificates(entry)
        names.append(paths.capath)
    if not found:
        raise FleetpinError("no system CA store found (OpenSSL's default paths hold no certificates)",
                            hint="pass --ca FILE with the CA certificates your servers chain to")
    return TrustStore(found, f"the system CA store ({', '.join(names)})")


def ca_file_store(path: Path) -> TrustStore:
    ders = load_certificates(path, "--ca file")
    try:
        return TrustStore([x509.load_der_x509_certificate(d) for d in ders], f"--ca {path}")
    except ValueError as e:
        raise UsageError(f"{path}: cannot parse a CA certificate: {e}") from None


def _pem_certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []  # a store holds other files too; what is not a PEM certificate is not an anchor


def anchor_of(target: HostTarget, store: TrustStore, timeout: float = 20.0) -> Anchor:
    """The trust anchor of `store` that the chain `target` serves validates to (host name and
    dates checked, now); FleetpinError saying why when it does not validate."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    served = [x509.load_der_x509_certificate(d) for d in fetch_chain(target, timeout=timeout, verify=False)]
    try:
        verifier = PolicyBuilder().store(Store(store.certificates)).build_server_verifier(host_name(target.host))
        built = verifier.verify(served[0], served[1:])
    except (VerificationError, ValueError) as e:
        raise FleetpinError(f"{target}: the chain it serves does not validate against {store.name}: {e}",
                            hint="pass --ca FILE with the CA certificate(s) this server chains to, "
                                 "or fix the server's chain (host name, dates, missing intermediate)") from None
    root = built[-1]
    try:
        is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise FleetpinError(f"{target}: the chain ends at {root.subject.rfc4514_string()}, which is not marked as a "
                            "CA certificate (no basicConstraints CA=true): a bundle cannot carry it",
                            hint="pass --ca FILE with a CA certificate of the chain that is marked as a CA")
    der = root.public_bytes(serialization.Encoding.DER)
    pin = base64.b64encode(hashlib.sha256(raw_spki_of_tbs(root.tbs_certificate_bytes)).digest()).decode()
    return Anchor(target, der, root.subject.rfc4514_string() or "(empty subject)", pin,
                  int(root.not_valid_after_utc.timestamp()), len(built))
