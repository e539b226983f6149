"""A stand-in rank: ``fake_rank.py <rank> <marker dir> <mode>``. Mode ``graceful``: on TERM it
takes 0.3 s (finishing a checkpoint), writes ``stopped-<rank>`` and exits 143; ``stubborn``
ignores TERM (only SIGKILL ends it)."""
import signal
import sys
import time
from pathlib import Path

rank, folder, mode = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def stop(signum, frame):
    if mode == "stubborn":
        return
    time.sleep(0.3)
    (folder / f"stopped-{rank}").write_text(str(signum))
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(folder / f"started-{rank}").write_text("")
while True:
    time.sleep(0.05)
