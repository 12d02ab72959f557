"""A service that has drained exits even when a thread of it is stuck (a llama.cpp call, a blocking client)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from spiral_common.grpc_service import run_event_loop

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


@pytest.mark.parametrize(("kind", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_a_service_runs_on_the_event_loop_its_setting_names(kind, module):
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_event_loop(main(), kind)
    assert seen and seen[0].split(".")[0] == module
