# Moved to fleetpin.sim.pki (the demo and drills use it too); this alias goes once tests import it from there.
from fleetpin.sim.pki import *  # noqa: F401,F403
from fleetpin.sim.pki import KEY_TYPES, LEAF_NAMES, Pki, PkiFiles, make_pki  # noqa: F401
