# pinagent.agent's boot (issue 19, item 6): a bundle's signatures are verified once, when it is
# installed; a boot checks the slot's digest (pinagent.store) and decodes the bundle, so a board
# that deep-sleeps does not pay an ECDSA verification (about 0.5 s on an ESP32) at every wake.
# Damage is still found at boot (the digest), and an update is still verified in full.
# Runs unchanged under CPython and on the MicroPython runtimes (helpers: agent_support.py).

from agent_support import E_SIGNATURE, GOOD, FakeTls, R, _agent, _board, _bundle, _refused, _signers, _upload

from pinagent import store as S


class _Spy:
    """Counts calls of pinagent.ecdsa.verify_p256 (and still verifies). On MicroPython a boot
    forgets the update path (pinagent.forget): the spy goes into the module imported now, which
    is the one the code imports until the next boot."""

    def __init__(self):
        self.calls = 0

    def __call__(self, key, digest, sig):
        self.calls += 1
        return self.real(key, digest, sig)

    def __enter__(self):
        from pinagent import ecdsa

        self.mod = ecdsa
        self.real = ecdsa.verify_p256
        ecdsa.verify_p256 = self
        return self

    def __exit__(self, *exc):
        self.mod.verify_p256 = self.real


def _connect(agent):
    agent.tls.chains["chain-leaf.example"] = GOOD
    agent.connect("chain-leaf.example", 443)
    return agent.last_verdict


def test_boot_verifies_no_signature_and_an_update_is_verified():
    with _Spy() as spy:
        a = _agent(_board("v1.bin"), tls=FakeTls())
    assert a.state.mode == S.MODE_OK and a.state.version == 1, a.state.problems
    assert spy.calls == 0
    assert _connect(a).allowed  # the policy and CA certificates are loaded as before
    with _Spy() as spy:
        assert _upload(a, _bundle("v2.bin"))["installed"]
        assert spy.calls >= 1
        e = _refused(_upload, a, _bundle("v2_bad_signature.bin"))
        assert e.code == E_SIGNATURE, e.reason
    with _Spy() as spy:
        b = _agent(a.fs.os.reboot())
    assert b.state.mode == S.MODE_OK and b.state.version == 2, b.state.problems
    assert spy.calls == 0


def test_a_slot_rewritten_with_a_good_digest_is_not_reverified_at_boot():
    # Authenticity is established at install (by the agent, or by `fleetpin image build` for the
    # factory image); whoever can rewrite a slot and its digest in flash can rewrite the agent too
    # (THREAT_NOTES_g19.md). So boot does not look at the signatures again.
    data = bytearray(_bundle("v1.bin"))
    data[-1] ^= 1  # the last byte of the signature
    ffs = _board()
    ffs.files[R + "bundle.bin"] = S.encode_slot(_signers(), bytes(data))
    a = _agent(ffs)
    assert a.state.mode == S.MODE_OK and a.state.version == 1, a.state.problems


def test_a_damaged_slot_is_still_found_at_boot():
    ffs = _board("v1.bin")
    a = _agent(ffs)
    assert _upload(a, _bundle("v2.bin"))["installed"]
    ffs = a.fs.os.reboot()
    slot = bytearray(ffs.files[R + "bundle.bin"])
    slot[len(slot) // 2] ^= 1
    ffs.files[R + "bundle.bin"] = bytes(slot)
    b = _agent(ffs)
    assert b.state.mode == S.MODE_RECOVERED and b.state.version == 1
    assert "digest" in b.state.problems[0], b.state.problems
    # the recovery never goes back: the trust record still says version 2 was installed
    assert b.state.max_version == 2
    del ffs.files[R + "bundle.prev"]
    c = _agent(ffs.reboot())
    assert c.state.mode == S.MODE_SAFE and "digest" in c.state.problems[0], c.state.problems
