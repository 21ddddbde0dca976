"""A TLS socket whose handshake runs on its first read or write (asyncio.open_connection asks
mbedTLS for do_handshake_on_connect=False), for pinagent.tlsctx: loaded only by an application
that uses agent.tls_context().

    DeferredSocket(tls_sock, settle)    settle(error) decides it (pinagent.tlsctx)
"""

from io import IOBase  # a user stream: select.poll calls its ioctl (MICROPY_PY_IO_IOBASE, on ESP32)

from pinagent.io.tls import _close

_POLL = 3  # MP_STREAM_POLL (py/stream.h): select.poll on this object asks for these events
_CLOSE = 4  # MP_STREAM_CLOSE


class DeferredSocket(IOBase):
    """Stands in for a TLS socket whose handshake runs on its first read or write (mbedTLS with
    do_handshake_on_connect=False, as asyncio.open_connection asks for it). Until the pin check
    has decided, every call goes through `settle`:

        settle(error)   error: the exception the call raised (the handshake failed, or the
                        check refused the chain), or None when the call got through; raises the
                        connection's ConnectError, or returns when the verdict allows it

    and a refusal is raised again by every later call. Once allowed, calls go straight to the
    TLS socket. `ioctl` makes it pollable (select.poll, asyncio): it forwards the poll to the
    TLS socket, which knows whether mbedTLS holds decrypted bytes the raw socket does not show.
    """

    def __init__(self, sock, settle):
        self._s = sock
        self._settle = settle
        self._pending = True  # the pin check has not decided yet
        self._error = None
        self._poll = None

    def _call(self, fn, args):
        if not self._pending:
            return fn(*args)
        if self._error is not None:
            raise self._error
        try:
            r = fn(*args)
        except Exception as e:
            self._refuse(e)
        if r is None:  # would block: the handshake (or the data) has not arrived yet
            return None
        try:
            self._settle(None)
        except Exception as e:
            self._refuse(e)
        self._pending = False
        return r

    def _refuse(self, e):
        try:
            self._settle(e)
            err = e  # settle accepted an error: cannot happen, fail closed anyway
        except Exception as refusal:
            err = refusal
        self._error = err
        _close(self._s)
        raise err

    def read(self, n=-1):
        return self._call(self._s.read, (n,))

    def readinto(self, buf, n=-1):
        return self._call(self._s.readinto, (buf,) if n < 0 else (buf, n))

    def readline(self):
        return self._call(self._s.readline, ())

    def write(self, buf):
        return self._call(self._s.write, (buf,))

    def recv(self, n):
        return self._call(self._s.recv, (n,))

    def send(self, buf):
        return self._call(self._s.send, (buf,))

    def sendall(self, buf):
        return self._call(self._s.sendall, (buf,))

    def setblocking(self, flag):
        self._s.setblocking(flag)

    def close(self):
        _close(self._s)

    def ioctl(self, op, arg):
        if op == _POLL:
            if self._error is not None:
                return arg  # ready: the next call raises the refusal
            import select

            p = self._poll
            if p is None:
                p = self._poll = select.poll()
                p.register(self._s, arg)
            else:
                p.modify(self._s, arg)
            ready = p.poll(0)
            return ready[0][1] if ready else 0
        if op == _CLOSE:
            _close(self._s)
            return 0
        return -1  # no file descriptor of its own: select polls it through POLL
