"""Fuzzing the serial frame parser (CPython only): whatever arrives on the line, the parser
raises nothing but FrameError subclasses, never returns a frame whose CRC32 is wrong, keeps
its state inside its one buffer, and finds every real frame that follows junk."""

from __future__ import annotations

import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpin.protocol import link_host
from fleetpin.protocol.link_host import HostLink
from pinagent import link
from pinagent.link import DeviceLink, FrameDecoder, FrameError, encode_frame

MAX = 64


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def drain(dec: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    frames = []
    for p in pieces:
        dec.feed(p)
        while True:
            try:
                f = dec.next_frame()
            except FrameError as e:
                assert e.reason
                continue
            if f is None:
                break
            n = len(f)
            # the CRC the decoder checked sits right after the frame in its buffer
            crc = int.from_bytes(bytes(dec._buf[n : n + 4]), "little")
            assert binascii.crc32(bytes(f)) == crc
            assert link.MIN_FRAME - 4 <= n <= MAX - 4
            frames.append(bytes(f))
        assert 0 <= dec._n <= MAX and len(dec._buf) == MAX
        assert dec._data == b""  # nothing held back once it answered None
    return frames


# bytes biased towards the ones the parser cares about
line_bytes = st.lists(
    st.one_of(st.sampled_from([link.FLAG, link.ESC, 0x5E, 0x5D, 0x21, 0x23, 0x00]), st.integers(0, 255)),
    max_size=400,
).map(bytes)
cuts = st.lists(st.integers(0, 1000), max_size=20)
frame = st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=MAX - 7))


@settings(max_examples=400, deadline=None)
@given(line_bytes, cuts)
def test_arbitrary_bytes_only_raise_frame_errors(data: bytes, c: list[int]) -> None:
    drain(FrameDecoder(MAX), split(data, c))


@settings(max_examples=300, deadline=None)
@given(line_bytes, st.lists(st.tuples(frame, line_bytes), max_size=4), cuts)
def test_every_real_frame_after_junk_is_found(junk: bytes, frames, c: list[int]) -> None:
    wire = bytearray(junk)
    want = []
    for (seq, ctl, body), between in frames:
        wire += encode_frame(seq, ctl, body) + between
        want.append(bytes((seq, ctl, 0)) + body)
    got = drain(FrameDecoder(MAX), split(bytes(wire), c))
    it = iter(got)
    assert all(any(g == w for g in it) for w in want), (want, got)  # want is a subsequence


@settings(max_examples=200, deadline=None)
@given(frame, cuts)
def test_roundtrip_any_split(f, c: list[int]) -> None:
    seq, ctl, body = f
    got = drain(FrameDecoder(MAX), split(bytes(encode_frame(seq, ctl, body, None)), c))
    assert len(got) == 1 and got[0][:2] == bytes((seq, ctl)) and got[0][3:] == body
    assert got[0][2] == link.best_key(body)


@settings(max_examples=200, deadline=None)
@given(line_bytes)
def test_both_link_ends_survive_any_input(data: bytes) -> None:
    dev = DeviceLink(lambda op, body: (op, bytes(body)))
    dev.receive_data(encode_frame(0, link.OP_HELLO, b"\x01"))
    out = dev.receive_data(data)
    assert isinstance(out, (bytes, bytearray))
    host = HostLink()
    host.data_to_send(0)
    for ev in host.receive_data(data, 1):
        assert isinstance(ev, (
            link_host.Response, link_host.Failed, link_host.Connected, link_host.Restarted, link_host.VersionMismatch
        ))
    assert 0 <= host.in_flight <= host.window
