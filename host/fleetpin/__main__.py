import sys

from fleetpin.cli import main

sys.exit(main())
