"""`python -m optbench ...` (also what torchrun launches: torchrun -m optbench train ...)."""

import sys

from optbench.cli import main

sys.exit(main())
