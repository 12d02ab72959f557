"""Running the training process without a network, a minimal environment and resource limits.

Linux network namespaces do it without extra packages: `unshare --net --map-root-user` (util-linux) gives
the child a namespace with only a loopback that is down. The white paper's `--net=none` is the same kernel
feature as Docker's or firejail's. The sandbox fails closed: where the kernel refuses (no unprivileged user
namespaces, a container without the capability), a job refuses to train (`SANDBOX_UNAVAILABLE`) unless the
operator said the network may stay on with `SPIRAL_TRAINER_SANDBOX=none` (e.g. in Kubernetes, where the
trainer pod's NetworkPolicy denies egress instead). The child sets the Hugging Face offline flags either way,
so nothing is downloaded even without the namespace.

The child gets only the environment it needs (`child_env`): no API keys, no secrets file, no admin token.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from collections.abc import Mapping

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
    """The command prefix for `mode` ("unshare", "none") and whether the network is really off."""
    if mode == "none":
        log.warning("training runs with the network on: SPIRAL_TRAINER_SANDBOX=none allows it")
        return [], False
    if unshare_works():
        return list(UNSHARE), True
    raise FailedPrecondition(
        "this kernel refuses a network namespace (unshare --net), so training would run with the network on; "
        "set SPIRAL_TRAINER_SANDBOX=none to allow that (where something else cuts the trainer's network off)",
        reason="SANDBOX_UNAVAILABLE",
    )


# What the training child may see of the worker's environment: the interpreter's and the libraries' own
# settings, never a key, a token or the secrets file's path.
CHILD_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONHASHSEED")
CHILD_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "TORCH_", "HF_", "TRANSFORMERS_", "PYTORCH_")


def child_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The training child's environment: the allowed names of `environ`, then `extra`."""
    kept = {
        k: v
        for k, v in environ.items()
        if (k in CHILD_ENV_NAMES or k.startswith(CHILD_ENV_PREFIXES)) and not _secret_like(k)
    }
    return {**kept, **extra}


def _secret_like(name: str) -> bool:
    return any(word in name.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"))
