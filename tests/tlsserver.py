# Moved to fleetpin.sim.tlsserver (the demo and drills use it too); this alias goes once tests import it from there.
from fleetpin.sim.tlsserver import LOOPBACK, TlsServer, fetch  # noqa: F401
