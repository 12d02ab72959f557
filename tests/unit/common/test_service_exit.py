"""A service that has drained exits even when a thread of it is stuck (a llama.cpp call, a blocking client)."""

from __future__ import annotations

import subprocess
import sys

STUCK_SERVICE = """
import threading
from spiral_common.grpc_service import _exit_after
from spiral_common.logs import configure_logging
configure_logging("test", "INFO")
threading.Thread(target=threading.Event().wait, name="stuck-generation").start()  # never returns
_exit_after(0.2)
"""


def test_a_thread_stuck_after_the_drain_is_abandoned_and_the_process_exits_0():
    done = subprocess.run([sys.executable, "-c", STUCK_SERVICE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "abandoned" in done.stderr and "stuck-generation" in done.stderr
