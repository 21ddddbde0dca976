"""Every drill scenario is a test: it must pass, and a drill that bricks a device must fail. The
boards run device/main.py on MicroPython's unix port (the default runtime); one scenario also
runs on the CPython stand-in."""

from __future__ import annotations

import json

import pytest
from runtimes import needs_unix_port

from fleetpin.sim import drill as drills
from fleetpin.sim.drill import DRILLS, World, run_drill


@needs_unix_port
@pytest.mark.parametrize("name", sorted(DRILLS))
def test_scenario_passes_and_accounts_for_every_device(name: str) -> None:
    lines: list[str] = []
    result = run_drill(name, devices=3, echo=lines.append)
    assert result.failures == [], "\n".join(lines)
    assert result.passed
    assert len(result.outcomes) == 3
    assert all(o.status in ("connected", "updated") for o in result.outcomes), result.outcomes
    assert lines and lines == result.timeline
    assert result.runtime == "micropython"  # device/main.py on the unix port, TLS on mbedTLS


def test_the_cpython_stand_in_plays_a_drill_too(fleetpin) -> None:  # type: ignore[no-untyped-def]
    result = run_drill("pins-expired", devices=3, runtime="cpython")  # its application runs in this process
    assert result.passed, result.failures
    r = fleetpin("drill", "rogue-ca", "--devices", "1", "--runtime", "cpython", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["passed"] is True and json.loads(r.stdout)[0]["runtime"] == "cpython"


@needs_unix_port
def test_ca_distrusted_rescues_exactly_the_stranded_devices() -> None:
    result = run_drill("ca-distrusted", devices=4)
    by_status = {o.device: o.status for o in result.outcomes}
    assert by_status == {"dev-00": "updated", "dev-01": "updated", "dev-02": "connected", "dev-03": "connected"}


@needs_unix_port
def test_a_drill_that_bricks_a_device_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scenario whose rescue never arrives: the stranded devices end UNREACHABLE and the drill fails."""

    def no_rescue(w: World) -> None:
        p = w.pki
        only_primary = w.bundle(1, [("primary", p.leaf.pin), ("typo", p.rogue_leaf.pin)], [p.root.der])
        w.serve("api", p, "leaf")
        w.boot(only_primary, "v1-no-backup", 2)
        w.serve("api", p, "backup_leaf")  # the primary key is lost, no backup was pinned
        w.account("api")

    monkeypatch.setitem(DRILLS, "no-rescue", drills.Drill("no-rescue", "t", "t", no_rescue))
    result = run_drill("no-rescue", devices=2)
    assert not result.passed
    assert [o.status for o in result.outcomes] == ["UNREACHABLE", "UNREACHABLE"]
    assert any("ended unreachable (mismatch)" in f for f in result.failures)


@needs_unix_port
def test_drill_cli_exit_codes(fleetpin) -> None:  # type: ignore[no-untyped-def]
    assert fleetpin("drill", "wrong-pin", "--devices", "1").exit_code == 0
    assert fleetpin("drill", "no-such-scenario").exit_code == 2


def test_an_mqtt_application_stays_connected_across_the_rotation() -> None:
    """primary-key-lost: dev-00 runs an MQTT application through agent.tls_context(); its broker
    rotates with the API (primary -> backup key, then bundle v2) and the application reconnects
    each time, matching the primary pin, the backup, then v2's primary. The application runs
    beside the serial service, in this process: the cpython runtime only (on a board, and on the
    micropython runtime, main.py serves the console or runs the application, not both)."""
    result = run_drill("primary-key-lost", devices=1, runtime="cpython")
    assert result.passed, result.failures
    alive = [line for line in result.timeline if "dev-00 MQTT: messages flowing" in line]
    assert len(alive) == 3, result.timeline
    assert alive[-1].endswith("connections matched/primary, matched/backup, matched/primary; refused 0")


def test_a_drill_whose_broker_moves_to_an_unpinned_key_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def unpinned_broker(w: World) -> None:
        p = w.pki
        w.start_pinned()
        app = w.start_app(w.boards[0], p, "leaf")
        w.app_alive(app, "before", connects=1)
        w.rotate_broker(p, "renewed_leaf")  # a key no bundle pins: the application is refused
        w.app_alive(app, "after", connects=2)
        w.account("api")

    monkeypatch.setitem(DRILLS, "unpinned-broker", drills.Drill("unpinned-broker", "t", "t", unpinned_broker))
    result = run_drill("unpinned-broker", devices=1, runtime="cpython")  # the MQTT application: cpython only
    assert not result.passed
    assert any("after: the MQTT application on dev-00 is connected" in f for f in result.failures), result.failures
    assert any("was never refused (['mismatch'" in f for f in result.failures), result.failures


def test_drill_record_counts_devices_left_unreachable(fleetpin, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from fleetpin.field.fleet import fleet_status
    from fleetpin.line.registry import Registry

    def no_rescue(w: World) -> None:
        p = w.pki
        w.serve("api", p, "leaf")
        w.boot(w.bundle(1, [("primary", p.leaf.pin)], [p.root.der]), "v1-no-backup", 2)
        w.serve("api", p, "backup_leaf")  # the primary key is lost, no backup was pinned
        w.account("api")

    monkeypatch.setitem(DRILLS, "no-rescue", drills.Drill("no-rescue", "t", "t", no_rescue))
    reg = f"sqlite:///{tmp_path / 'reg.sqlite'}"
    r = fleetpin("drill", "no-rescue", "--devices", "2", "--record", "--registry", reg, "--json")
    assert r.exit_code == 1 and [d["status"] for d in json.loads(r.stdout)[0]["devices"]] == ["UNREACHABLE"] * 2
    r = fleetpin("drill", "wrong-pin", "--devices", "1", "--record", "--registry", reg)  # passes: locks none out
    assert r.exit_code == 0 and "0 of 1 scenario(s) left devices locked out" in r.stdout
    with Registry(reg) as opened:
        found = [(lk["scenario"], lk["devices"], lk["reason"]) for lk in fleet_status(opened)["lockouts"]]
    assert found == [("no-rescue", 2, "2 UNREACHABLE of 2 devices (bundles v1-no-backup)")]
