"""A SIGTERM to the component process reaches the ``accelerate launch`` child (review finding 4).

A real child process stands in for the launcher: it writes a file when SIGTERM arrives and exits 0, so
the workers' checkpoint-on-SIGTERM path would run. Before the fix the parent ran the child with
``subprocess.run`` and died on its own SIGTERM, leaving the child running.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from components.train.launcher import run_forwarding_sigterm

CHILD = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def on_term(signum, frame):
    (out / "got_sigterm").write_text(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(out / "ready").write_text("1")
for _ in range(6000):  # at most 10 minutes, so a failing test cannot leave it behind for long
    time.sleep(0.1)
sys.exit(3)
"""


def test_sigterm_is_forwarded_to_the_child_and_the_old_handler_restored(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    received: list[int] = []

    def previous_handler(signum: int, frame: object) -> None:
        received.append(signum)

    old = signal.signal(signal.SIGTERM, previous_handler)
    try:

        def terminate_when_ready() -> None:
            # Waits on the child's own signal (its file), not on a clock.
            while not (tmp_path / "ready").exists():
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)

        killer = threading.Thread(target=terminate_when_ready, daemon=True)
        killer.start()
        returncode = run_forwarding_sigterm([sys.executable, str(script), str(tmp_path)])
        killer.join()
        assert returncode == 0
        assert (tmp_path / "got_sigterm").read_text() == str(int(signal.SIGTERM))
        assert received == [], "the SIGTERM went to the previous handler instead of the child"
        assert signal.getsignal(signal.SIGTERM) is previous_handler
    finally:
        signal.signal(signal.SIGTERM, old)
