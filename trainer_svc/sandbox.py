"""Running the training process without a network.

Linux network namespaces do it without extra packages: `unshare --net --map-root-user` (util-linux) gives
the child a namespace with only a loopback that is down. The white paper's `--net=none` is the same kernel
feature as Docker's or firejail's. Where the kernel refuses (no unprivileged user namespaces, a container
without the capability), `auto` falls back to running without the sandbox and says so in the job's log;
`unshare` makes that a hard error. The child sets the Hugging Face offline flags either way, so nothing is
downloaded even without the namespace.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess

from spiral_common.errors import FailedPrecondition

log = logging.getLogger(__name__)

UNSHARE = ("unshare", "--net", "--map-root-user")


@functools.cache
def unshare_works() -> bool:
    binary = shutil.which("unshare")
    if binary is None:
        return False
    try:
        return subprocess.run([binary, *UNSHARE[1:], "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def sandbox_prefix(mode: str) -> tuple[list[str], bool]:
    """The command prefix for `mode` ("auto", "unshare", "none") and whether the network is really off."""
    if mode == "none":
        return [], False
    if unshare_works():
        return list(UNSHARE), True
    if mode == "unshare":
        raise FailedPrecondition(
            "SPIRAL_TRAINER_SANDBOX=unshare, but this kernel refuses a network namespace (unshare --net)",
            reason="SANDBOX_UNAVAILABLE",
        )
    log.warning("training runs with the network on: this kernel refuses unshare --net (SPIRAL_TRAINER_SANDBOX)")
    return [], False
