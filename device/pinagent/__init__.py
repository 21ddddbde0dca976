# pinagent: the fleetpin device agent. The core modules are pure (bytes in, decisions out);
# everything that touches hardware lives in pinagent.io and is passed in.
VERSION = "0.1.0"
