"""``python -m sparsebench`` (also what ``torchrun -m sparsebench`` runs)."""

import sys

from sparsebench.cli import main

sys.exit(main())
