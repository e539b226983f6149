"""A stand-in for the ``deepspeed`` runner (its file name says deepspeed): starts the per-node launcher."""
import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
launcher = subprocess.Popen([sys.executable, str(here / "fake_launch.py"), "deepspeed.launcher.launch", *sys.argv[1:]])
sys.exit(launcher.wait())
