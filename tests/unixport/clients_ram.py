# RAM of the pinned clients on the MicroPython unix port (tests/host/test_pinned_clients.py and
# bench/bench_clients.py start it, with modules as .mpy and a hard heap: -X heapsize=...).
#
#   micropython -X heapsize=NK clients_ram.py JOB.json
#
# JOB: {"root", "fleet", "device_id", "scenario": "modules" | "boot" | "get" | "mqtt", "url", "server", "port"}
#   modules  imports what the clients need (the agent, its TLS adapter and context, the HTTP
#            client, the MQTT client), prints "MODULES <bytes live>", nothing else
#   boot     imports the same and boots the agent (verifies its bundle), nothing more
#   get      boots the agent and makes a pinned GET of `url` (a 4 KB body)
#   mqtt     boots the agent, connects to the broker through agent.tls_context(), publishes
# Prints "RAM {...}": live heap (gc.mem_alloc after gc.collect) at the start, after the imports,
# after boot, and after the exchange; "MEMORY" and exit 3 on MemoryError.
import gc
import sys

gc.collect()
START = gc.mem_alloc()


def main():
    import json

    job = json.loads(open(sys.argv[1]).read())
    import pinagent.agent
    import pinagent.io.tls
    import pinagent.tlsctx

    if job["scenario"] in ("modules", "boot", "get"):
        import pinagent.http
    if job["scenario"] in ("modules", "boot", "mqtt"):
        import mqtt
    gc.collect()
    ram = {"start": START, "modules": gc.mem_alloc()}
    if job["scenario"] == "modules":
        print("MODULES %d" % (ram["modules"] - START))
        return
    import os
    import time

    agent = pinagent.agent.Agent(pinagent.store.FS(os, open), lambda: int(time.time()), job["device_id"], job["fleet"],
                                 pinagent.io.tls.EspTls(), root=job["root"])
    agent.boot()
    if agent.state.mode != "ok":
        # a bundle the store could not verify for lack of heap boots the agent into safe mode
        if "MemoryError" in " ".join(agent.state.problems):
            raise MemoryError(agent.state.problems[0])
        raise AssertionError("%s %r" % (agent.state.mode, agent.state.problems))
    gc.collect()
    ram["booted"] = gc.mem_alloc()
    if job["scenario"] == "boot":
        print("RAM " + json.dumps(ram))
        return
    if job["scenario"] == "get":
        r = agent.requests.get(job["url"])
        body = r.content
        assert r.status_code == 200 and len(body) == 4096, (r.status_code, len(body))
        body = r = None
    else:
        c = mqtt.MQTTClient(job["device_id"], job["server"], job["port"], ssl=agent.tls_context())
        c.connect()
        c.publish(b"fleet/" + job["device_id"].encode(), b"21.5")
        c.disconnect()
        c = None
    assert agent.last_verdict.reason == "matched", agent.last_verdict.reason
    gc.collect()
    ram["after"] = gc.mem_alloc()
    print("RAM " + json.dumps(ram))


try:
    main()
except Exception as e:
    # out of heap, directly or inside a refused connection (a handshake that ran out of heap is
    # refused: TlsRefused "tls_failed: MemoryError ...")
    if not isinstance(e, MemoryError) and "MemoryError" not in str(e):
        raise
    print("MEMORY")
    sys.exit(3)
