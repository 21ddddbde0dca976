# pinagent: the fleetpin device agent. The core modules are pure (bytes in, decisions out);
# everything that touches hardware lives in pinagent.io and is passed in.
VERSION = "0.1.0"

# The update path: what an update needs (the request handler, the store's install, the bundle decoder with its
# signature, signer-set and policy checks, and pinagent.installed, which keeps the installed bundle decoded).
# Loaded by a boot (pinagent.installed; the decoder only when that has nothing for the slot) and by a serial session,
# and forgotten after either (the session also forgets the service and the link:
# pinagent.io.console.SESSION_MODULES), so an application never holds its code. Forgotten
# together, and with whatever imports them at module level: the handler's error table holds the
# bundle's classes, which a reloaded bundle's would not match. The service stays until its
# session ends: a running Service and the handler's refusals must share one ServiceError.
UPDATE_PATH = ("pinagent.handler", "pinagent.install", "pinagent.installed", "pinagent.bundle", "pinagent.policy_load",
               "pinagent.signers", "pinagent.ecdsa")


def forget(names=UPDATE_PATH):
    """Forgets these modules of the package (sys.modules, and the attribute `import pinagent.x`
    set here), so the heap their code holds is freed at the next collection. Nothing that stays
    loaded may refer to them (it imports them inside functions, never at module level); the next
    import loads them again. On MicroPython only: on CPython the rest of the process (the tests)
    holds their classes, and the heap is no issue. The strings a module interned stay (qstrs)."""
    import sys

    if sys.implementation.name != "micropython":
        return
    pkg = sys.modules.get("pinagent")
    for name in names:
        if sys.modules.pop(name, None) is not None and pkg is not None and name.count(".") == 1:
            try:
                delattr(pkg, name[9:])
            except AttributeError:
                pass
