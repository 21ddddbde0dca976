# What ships to a board, in MicroPython's manifest convention (micropython/tools/manifestfile.py).
# `fleetpin image build` installs exactly these files into the board's filesystem (modules
# compiled with mpy-cross, main.py as source), and a firmware build freezes them with
# include("<this folder>/manifest.py") in its own manifest. Nothing else decides what ships.
metadata(description="fleetpin agent: pinned TLS connections and signed pin bundles", version="0.1.0")
package("pinagent")
module("main.py")
