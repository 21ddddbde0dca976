"""What `fleetpin pin --runtime micropython|wasm` reads back: the agent prints `PIN i <pin>` for
each certificate it pinned and `ERR i <reason>` for one its DER walker refuses."""

from __future__ import annotations

from fleetpin.errors import FleetpinError


def parse_pin_lines(out: str, count: int, where: str) -> list[str]:
    """The pins of certificates 0..count-1 in order; FleetpinError if the agent refused one or
    printed fewer (`where` names the runtime in the message)."""
    result: dict[int, str] = {}
    for line in out.splitlines():
        tag, _, rest = line.partition(" ")
        index, _, value = rest.partition(" ")
        if tag == "PIN":
            result[int(index)] = value.strip()
        elif tag == "ERR":
            raise FleetpinError(f"the device agent ({where}) cannot parse certificate {index}: {value}",
                                hint="this device would refuse the connection; report it with the certificate")
    if sorted(result) != list(range(count)):
        raise FleetpinError(f"{where} printed {len(result)} pins for {count} certificates: {out[-2000:]!r}")
    return [result[i] for i in range(count)]
