"""A stand-in for DeepSpeed's per-node launcher (``deepspeed.launcher.launch`` in its command
line): two ranks, no signal handling of its own; exits with the first non-zero rank status."""
import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
ranks = [subprocess.Popen([sys.executable, str(here / "fake_rank.py"), str(r), *sys.argv[2:]]) for r in range(2)]
codes = [p.wait() for p in ranks]
sys.exit(next((c for c in codes if c), 0))
