"""A SIGTERM to the component process reaches the ``accelerate launch`` child (review finding 4), and the
workers get ``LaunchPlan.shutdown_grace_s`` to checkpoint before torchrun kills them (review round 2, finding 2).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


# Review round 2, finding 2: torchrun's agent SIGKILLs the workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds
# (default 30) after forwarding a SIGTERM; LaunchPlan.shutdown_grace_s sets it. The worker stands in for a
# trainer whose checkpoint takes SAVE_S seconds after the SIGTERM.
WORKER = """
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1]); rank = os.environ["RANK"]
told = []
signal.signal(signal.SIGTERM, lambda s, f: told.append(s))
(out / f"ready-{rank}").write_text("1")
for _ in range(3000):
    if told:
        break
    time.sleep(0.1)
for _ in range(int(float(os.environ["SAVE_S"]) * 10)):
    time.sleep(0.1)
(out / f"checkpoint-complete-{rank}").write_text("1")
"""


def _launch_and_terminate(tmp_path: Path, grace_s: int, save_s: int) -> tuple[int, list[str]]:
    """``accelerate launch`` of 2 worker processes through run_forwarding_sigterm, SIGTERM once both are up."""
    from components.train.launcher import LaunchPlan, accelerate_config_file, launch_environment

    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config_file("ddp")),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        str(script),
        str(out),
    ]
    env = launch_environment(LaunchPlan(gpus_per_node=2, shutdown_grace_s=grace_s), cuda_available=False)
    env["SAVE_S"] = str(save_s)

    def terminate_when_ready() -> None:
        while len(list(out.glob("ready-*"))) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_ready, daemon=True)
    killer.start()
    returncode = run_forwarding_sigterm(command, env=env)
    killer.join()
    return returncode, sorted(p.name for p in out.glob("checkpoint-complete-*"))


def test_launch_environment_sets_the_shutdown_grace() -> None:
    from components.train.launcher import LaunchError, LaunchPlan, launch_environment

    env = launch_environment(LaunchPlan(gpus_per_node=2), cuda_available=True, base={})
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "600"
    env = launch_environment(LaunchPlan(gpus_per_node=2, shutdown_grace_s=45), cuda_available=True, base={})
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "45"
    with pytest.raises(LaunchError, match="shutdown_grace_s"):
        LaunchPlan(shutdown_grace_s=0)


@pytest.mark.slow
def test_a_short_grace_is_what_torchrun_waits_before_killing_the_workers(tmp_path: Path) -> None:
    # A 12 s save inside torchrun's default 30 s would complete; with a 2 s grace the agent kills it.
    returncode, complete = _launch_and_terminate(tmp_path, grace_s=2, save_s=12)
    assert returncode != 0
    assert complete == []


@pytest.mark.slow
def test_workers_finish_a_checkpoint_longer_than_torchruns_default_30_s(tmp_path: Path) -> None:
    returncode, complete = _launch_and_terminate(tmp_path, grace_s=90, save_s=35)
    assert complete == ["checkpoint-complete-0", "checkpoint-complete-1"]
    assert returncode != 0  # torchrun's agent exits 1 after a signal, even when the workers finished


@pytest.mark.slow
def test_launch_reports_a_preemption_of_accelerate_workers_as_preempted(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    """The real trainer on 2 CPU processes: the agent exits 1 after the SIGTERM, rank 0's result says
    preempted, and launch() says so (with the step and checkpoint) instead of 'exited with code 1'."""
    from components.train import checkpoint as ckpt
    from components.train.launcher import LaunchError, LaunchPlan, launch

    ckpt_dir = tmp_path / "ckpts"
    config = make_config(
        checkpoint_dir=str(ckpt_dir), max_steps=100000, checkpoint_every=1, keep_last_checkpoints=1
    )

    def terminate_after_first_checkpoint() -> None:
        # The first checkpoint means both workers are in the loop, with the SIGTERM handler installed.
        while not ckpt.list_checkpoints(str(ckpt_dir)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_first_checkpoint, daemon=True)
    killer.start()
    with pytest.raises(LaunchError, match=r"preempted at step \d+; checkpoint .*checkpoint-\d+ is resumed"):
        launch(config, LaunchPlan(gpus_per_node=2, shutdown_grace_s=120))
    killer.join()
