# Runs on MicroPython too (the pinned-client tests run it on the unix port): no typing, no
# f-strings, no imports but socket (at connect: the wasm VM has none). Not shipped to boards: applications bring their own
# MQTT client (micropython-lib's umqtt.simple has this interface).
"""A minimal MQTT 3.1.1 client (QoS 0) with the interface of micropython-lib's umqtt.simple,
written from the MQTT 3.1.1 specification, for the simulation and the tests:

    c = MQTTClient("dev-1", "broker.example.com", 8883, ssl=agent.tls_context(), keepalive=60)
    c.set_callback(lambda topic, msg: ...)
    c.connect()                      CONNECT / CONNACK; returns the session-present flag
    c.subscribe(b"fleet/dev-1")      SUBSCRIBE / SUBACK
    c.publish(b"fleet/dev-1", b"21.5")
    c.wait_msg()                     one packet; a PUBLISH goes to the callback
    c.check_msg()                    the same without blocking
    c.ping(); c.disconnect()

Like umqtt.simple, connect() resolves `server`, connects a TCP socket and, given `ssl` (an
SSLContext or anything with its wrap_socket), calls ssl.wrap_socket(sock, server_hostname=server).
`address` (an extra, for loopback tests whose names do not resolve): the (ip, port) to connect
to instead of resolving `server`; TLS still sees `server`.
"""

class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None,
                 address=None):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.address = address
        self.sock = None
        self.cb = None
        self.pid = 0
        self._suback = b""

    def set_callback(self, f):
        self.cb = f

    def connect(self, clean_session=True, timeout=None):
        import socket

        if self.address is not None:
            addr = socket.getaddrinfo(self.address[0], self.address[1])[0][-1]
        else:
            addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        sock = socket.socket()
        if timeout is not None:
            sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        if self.ssl:
            sock = self.ssl.wrap_socket(sock, server_hostname=self.server)  # closes sock if it refuses
        self.sock = sock
        try:
            return self._handshake(clean_session)
        except BaseException:
            self.close()
            raise

    def _handshake(self, clean_session):
        flags = 0x02 if clean_session else 0
        payload = _string(self.client_id)
        if self.user is not None:
            flags |= 0x80
            payload += _string(self.user)
            if self.pswd is not None:
                flags |= 0x40
                payload += _string(self.pswd)
        ka = self.keepalive
        header = b"\x00\x04MQTT\x04" + bytes([flags, ka >> 8, ka & 0xFF])
        self._send(0x10, header + payload)
        ack = self._read(4)
        if ack[0] != 0x20 or ack[1] != 2:
            raise MQTTException("bad CONNACK %r" % (ack,))
        if ack[3] != 0:
            raise MQTTException(ack[3])  # the broker's return code, as umqtt.simple raises it
        return ack[2] & 1

    def close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass

    def disconnect(self):
        try:
            self.sock.write(b"\xe0\x00")
        finally:
            self.close()

    def ping(self):
        self.sock.write(b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        if qos != 0:
            raise ValueError("this client publishes with QoS 0 only")
        self._send(0x31 if retain else 0x30, _string(topic) + _bytes(msg))

    def subscribe(self, topic, qos=0):
        if qos != 0:
            raise ValueError("this client subscribes with QoS 0 only")
        self.pid = self.pid % 65535 + 1
        pid = self.pid
        self._send(0x82, bytes([pid >> 8, pid & 0xFF]) + _string(topic) + b"\x00")
        while True:
            op = self.wait_msg()
            if op == 0x90:
                body = self._suback
                if body[0] != pid >> 8 or body[1] != pid & 0xFF or body[2] == 0x80:
                    raise MQTTException("subscription refused %r" % (body,))
                return

    def set_last_will(self, *args, **kwargs):
        raise NotImplementedError("not needed by the simulation")

    def wait_msg(self):
        """Reads one packet: the callback gets a PUBLISH's (topic, msg). Returns None when a
        non-blocking socket has nothing, else the packet type (0x30 PUBLISH, 0xD0 PINGRESP...)."""
        first = self.sock.read(1)
        if first is None:
            return None
        if first == b"":
            raise OSError(-1, "the broker closed the connection")
        op = first[0] & 0xF0
        n = self._length()
        body = self._read(n) if n else b""
        if op == 0x30:
            tlen = (body[0] << 8) | body[1]
            topic = body[2:2 + tlen]
            start = 2 + tlen + (2 if first[0] & 0x06 else 0)  # a packet id follows for QoS > 0
            if self.cb is not None:
                self.cb(topic, body[start:])
        elif op == 0x90:
            self._suback = body
        return op

    def check_msg(self):
        self.sock.setblocking(False)
        try:
            return self.wait_msg()
        finally:
            self.sock.setblocking(True)

    def _length(self):
        n = 0
        shift = 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 21:
                raise MQTTException("bad remaining length")

    def _send(self, first, body):
        n = len(body)
        out = bytearray([first])
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | 0x80 if n else b)
            if not n:
                break
        self.sock.write(bytes(out) + body)

    def _read(self, n):
        data = b""
        while len(data) < n:
            part = self.sock.read(n - len(data))
            if part is None:  # non-blocking and nothing yet: the rest of a packet is on its way
                continue
            if not part:
                raise OSError(-1, "the broker closed the connection")
            data += part
        return data


def _bytes(value):
    return value.encode() if isinstance(value, str) else bytes(value)


def _string(value):
    data = _bytes(value)
    return bytes([len(data) >> 8, len(data) & 0xFF]) + data
