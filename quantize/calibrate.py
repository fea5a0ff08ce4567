"""``python quantize/calibrate.py --subset ...``: the same command as ``hagrid-edge calibrate``."""

import sys

from hagrid_edge.commands.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
