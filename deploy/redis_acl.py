"""Renders the two Redis servers' ACL files from a secrets env file, for a Kubernetes Secret (docs/deploy.md).

`python -m deploy.redis_acl --secrets secrets.env --out DIR` writes DIR/redis.acl and DIR/redis-cache.acl (0600):
the users of spiral_common.redis_access with their passwords' SHA-256. `make up` renders the same files into the
run directory itself (deploy/render.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deploy.render import REDIS_ACL_FILES
from spiral_common import redis_access
from spiral_common.config import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", required=True, type=Path, help="the secrets env file (SPIRAL_REDIS_*_PASSWORD)")
    parser.add_argument("--out", required=True, type=Path, help="the directory to write the ACL files into")
    args = parser.parse_args(argv)
    passwords = redis_access.passwords_from({"SPIRAL_ENV_FILE": str(args.secrets)})
    missing = [redis_access.password_variable(user) for user, password in passwords.items() if not password]
    if missing:
        print(f"{args.secrets} has no {', '.join(missing)}: every Redis user needs a password", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = load_settings().redis.redis_prefix
    for instance, name in REDIS_ACL_FILES.items():
        fd = os.open(args.out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(redis_access.acl_file(prefix, passwords, instance))
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
