# Runs on the MicroPython unix port (tests/host/test_pinned_clients.py starts it): the agent
# over a flash directory on the host, the real native-TLS adapter (pinagent.io.tls.EspTls), and
# the clients applications use, each against the loopback servers the test started.
#
#   micropython clients_app.py JOB.json
#
# JOB: {"root": flash dir, "fleet": ..., "device_id": ..., "cases": [{"id": ..., "kind": ...}]}
# Prints one line per case: "CASE " + JSON {"id", "ok", ... result or error ..., "reports"}.
# The test puts a `socket` shim first on sys.path: every name resolves to 127.0.0.1.
import sys
import json
import time

JOB = json.loads(open(sys.argv[1]).read())


def make_agent():
    import os
    from pinagent.agent import Agent
    from pinagent.store import FS
    from pinagent.io.tls import EspTls

    agent = Agent(FS(os, open), lambda: int(time.time()), JOB["device_id"], JOB["fleet"], EspTls(),
                  root=JOB["root"])
    agent.boot()
    return agent


def error_result(e, stage):
    out = {"ok": False, "stage": stage, "error": type(e).__name__, "text": str(e)[:200]}
    v = getattr(e, "verdict", None)
    if hasattr(e, "reason"):
        out["reason"] = e.reason
    if v is not None:
        out["allowed"] = v.allowed
        out["verdict"] = v.reason
        out["host"] = v.host
    return out


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def sha256_hex(data):
    import hashlib
    import binascii

    return str(binascii.hexlify(hashlib.sha256(data).digest()), "ascii")


def response_result(r):
    body = r.content
    out = {"ok": True, "status": r.status_code, "length": len(body), "sha256": sha256_hex(body)}
    try:
        out["text"] = str(body[:300], "utf-8")
    except Exception:
        pass
    return out


# ---- the clients


def case_requests(agent, case):
    client = agent.requests
    kw = case.get("kwargs") or {}
    if "auth" in kw:
        kw["auth"] = tuple(kw["auth"])
    try:
        r = client.request(case["method"], case["url"], **kw)
    except Exception as e:
        return error_result(e, "request")
    out = response_result(r)
    out["last_verdict"] = agent.last_verdict.reason
    out["global_requests_loaded"] = "requests" in sys.modules  # the pinned client leaves it alone
    return out


def case_plain_requests(agent, case):
    import requests  # micropython-lib's, frozen into the unix port: it sets CERT_NONE

    try:
        r = requests.get(case["url"])
    except Exception as e:
        return error_result(e, "request")
    return response_result(r)


def case_asyncio(agent, case):
    import asyncio

    async def talk():
        stage = "open_connection"
        try:
            reader, writer = await asyncio.open_connection(case["host"], case["port"], ssl=agent.tls_context())
            stage = "write"
            writer.write(b"hello over asyncio\n")
            await writer.drain()
            stage = "read"
            line = await reader.readline()
            await writer.wait_closed()
        except Exception as e:
            return error_result(e, stage)
        return {"ok": True, "line": str(line, "utf-8")}

    return asyncio.run(talk())


def case_mqtt(agent, case):
    from mqtt import MQTTClient

    ctx = agent.tls_context()
    if case.get("client_cert"):
        ctx.load_cert_chain(read_file(case["client_cert"]), read_file(case["client_key"]))
    got = []
    c = MQTTClient(case["client_id"], case["server"], case["port"], ssl=ctx, keepalive=30)
    c.set_callback(lambda topic, msg: got.append((topic, msg)))
    stage = "connect"
    try:
        c.connect()
        stage = "subscribe"
        c.subscribe(case["topic"])
        stage = "publish"
        c.publish(case["topic"], case["message"])
        stage = "receive"
        deadline = time.time() + 10
        while not got and time.time() < deadline:
            c.wait_msg()
        c.disconnect()
    except Exception as e:
        c.close()
        return error_result(e, stage)
    return {"ok": bool(got), "received": [[str(t, "utf-8"), str(m, "utf-8")] for t, m in got]}


def case_wrap(agent, case):
    """ctx.wrap_socket called directly, as other clients call it."""
    import socket

    ctx = agent.tls_context()
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", case["port"])[0][-1])
    kw = {}
    if case.get("server_hostname") is not None:
        kw["server_hostname"] = case["server_hostname"]
    if "do_handshake_on_connect" in case:
        kw["do_handshake_on_connect"] = case["do_handshake_on_connect"]
    try:
        t = ctx.wrap_socket(s, **kw)
    except Exception as e:
        return error_result(e, "wrap_socket")
    stage = "write"
    try:
        t.write(b"hi\n")
        stage = "read"
        data = t.read(100)
        t.close()
    except Exception as e:
        out = error_result(e, stage)
        try:  # the refusal sticks: every later call raises it again
            t.write(b"again\n")
            out["second"] = "no error"
        except Exception as e2:
            out["second"] = type(e2).__name__
        return out
    return {"ok": True, "data": str(data, "utf-8")}


CASES = {
    "requests": case_requests,
    "plain_requests": case_plain_requests,
    "asyncio": case_asyncio,
    "mqtt": case_mqtt,
    "wrap": case_wrap,
}


def reports_of(agent):
    out = []
    for r in agent.reports.read():
        out.append([r.get("validation-result"), r.get("hostname"), r.get("port"), r.get("count")])
    return out


def main():
    agent = make_agent()
    print("BOOT " + json.dumps({"mode": agent.state.mode}))
    for case in JOB["cases"]:
        try:
            out = CASES[case["kind"]](agent, case)
        except Exception as e:
            sys.print_exception(e)
            out = error_result(e, "case")
        out["id"] = case["id"]
        out["reports"] = reports_of(agent)
        print("CASE " + json.dumps(out))


main()
