import os
import sys

# Idle OpenMP threads sleep instead of spinning: with spinning, torch's CPU threads collapse
# (measured: 2 threads ran ~40x slower than 1) as soon as another process wants a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main

sys.exit(main())
