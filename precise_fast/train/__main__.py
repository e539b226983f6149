"""``python -m precise_fast.train`` (also what ``deepspeed --module precise_fast.train`` runs)."""

import sys

from .main import main

sys.exit(main())
