"""Who may do what in Redis: one ACL user per service, its keys and commands, and the one way to connect as it.

Two servers (spiral_common.config.RedisSettings): the state server holds the money, the jobs, the patterns, the
traffic log and the answer index and never evicts; the cache server holds the routers' answers and nothing
else. Both load an ACL file rendered from `USERS` below (`acl_file`); the `default` user is off, so a client
without a user and password is refused (NOAUTH), and a user outside its keys or commands is refused (NOPERM).
Passwords are `SPIRAL_REDIS_<USER>_PASSWORD` in the secrets env file (`make up` generates them); the ACL file
holds only their SHA-256. Without a password in the environment a service connects without one (the tests'
bare Redis).

Key patterns are relative to the key prefix (`SPIRAL_REDIS_PREFIX`); Redis checks them on every command,
inside Lua scripts too. A new key, channel or service gets its row here and in the README's table.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from spiral_common.config import Address, Settings
from spiral_common.specs import secret


class Instance(StrEnum):
    """Which Redis server: the state (noeviction, AOF) or the answer cache (allkeys-lru, no persistence)."""

    STATE = "state"
    CACHE = "cache"


# Commands every user may run: the connection's own (AUTH, HELLO, PING, CLIENT SETINFO...), reads and writes of
# its keys, MULTI/EXEC; never a command Redis calls dangerous (FLUSHALL, CONFIG, KEYS, DEBUG, ACL, MONITOR...).
_BASE_COMMANDS = ("+@connection", "+@read", "+@write", "+@transaction")


@dataclass(frozen=True)
class Access:
    """One user's rights on one server: key patterns it may read and write, may only read, pub/sub channels,
    and extra command categories (over the base: connection, read, write, transaction; never dangerous)."""

    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def rules(self, prefix: str) -> list[str]:
        p = _glob_escape(prefix)
        return [
            *(f"~{p}{key}" for key in self.read_write),
            *(f"%R~{p}{key}" for key in self.read_only),
            *(f"&{p}{channel}" for channel in self.channels),
            *_BASE_COMMANDS,
            *self.commands,
            "-@dangerous",
        ]


# The one table: each user, what it may touch on each server. Anything not here is refused.
USERS: dict[str, dict[Instance, Access]] = {
    # The routers: reserve and settle money (Lua), write the traffic log, the answer index, each answer's owner
    # and the rating marks, count each client key's requests against its rate; read the mined patterns and the
    # client API keys (created and revoked by the operator only); on the cache server, the answers and the copy
    # of the adapter versions their keys are made with.
    "router": {
        Instance.STATE: Access(
            read_write=(
                "budget:*",
                "traffic",
                "answer:*",
                "answer_owner:*",
                "rated:*",
                "adapter_version:*",
                "apikey_rate:*",
                "apikey_requests:*",
            ),
            read_only=("patterns:*", "apikeys", "apikey:*"),
            commands=("+@scripting", "+time"),  # the key rate's Lua step reads Redis's clock
        ),
        Instance.CACHE: Access(read_write=("cache:*", "adapter_version:*"), commands=("+@scripting",)),
    },
    # The trainer: its job queue (stream, consumer group, job hashes, the events channel), its machine time in
    # the ledger; the traffic log read-only (its training data).
    "trainer": {
        Instance.STATE: Access(
            read_write=("jobs", "jobs:*", "job:*", "budget:*"),
            read_only=("traffic",),
            channels=("jobs:events",),
            commands=("+@scripting", "+@pubsub"),
        ),
    },
    # The miner: the traffic log read-only, its own cursor, lock and answer map, and the pattern sets it
    # publishes. No money, no jobs.
    "miner": {
        Instance.STATE: Access(read_write=("miner:*", "patterns:*"), read_only=("traffic",)),
    },
    # The heads: the shared record of which adapter each head and track serves (every replica converges to it).
    "head": {
        Instance.STATE: Access(read_write=("adapters:serving",)),
    },
    # The operator's tools (spiralctl, make targets, benchmarks, the platform tests): every key of the prefix,
    # still no dangerous command.
    "operator": {
        Instance.STATE: Access(read_write=("*",), channels=("*",), commands=("+@scripting", "+@pubsub")),
        Instance.CACHE: Access(read_write=("*",), commands=("+@scripting",)),
    },
}


def password_variable(user: str) -> str:
    """The secrets env file's variable holding a user's password: SPIRAL_REDIS_ROUTER_PASSWORD."""
    return f"SPIRAL_REDIS_{user.upper()}_PASSWORD"


def acl_file(prefix: str, passwords: Mapping[str, str], instance: Instance) -> str:
    """The ACL file of one server: `default` off, then each user with rights on it, by its password's SHA-256.

    A user without a password is rendered `off` (it cannot log in)."""
    lines = ["user default off resetkeys resetchannels -@all"]  # an ACL file has no comments
    for user, rights in USERS.items():
        if instance not in rights:
            continue
        password = passwords.get(user, "")
        state = f"on #{hashlib.sha256(password.encode()).hexdigest()}" if password else "off"
        lines.append(
            " ".join(["user", user, "reset", state, "resetkeys", "resetchannels", *rights[instance].rules(prefix)])
        )
    return "\n".join(lines) + "\n"


def passwords_from(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every user's password from the environment or the secrets env file ("" where none is set)."""
    return {user: secret(password_variable(user), environ) for user in USERS}


def connect(
    settings: Settings, user: str, instance: Instance = Instance.STATE, environ: Mapping[str, str] | None = None
) -> Redis:
    """A client of one server, logged in as `user` when its password is set (else without a login)."""
    if user not in USERS:
        raise ValueError(f"no Redis user {user!r}; known: {', '.join(USERS)}")
    address: Address = settings.redis.redis_cache_addr if instance is Instance.CACHE else settings.redis.redis_addr
    password = secret(password_variable(user), os.environ if environ is None else environ)
    return Redis(
        host=address.host.strip("[]"),
        port=address.port,
        db=0,
        username=user if password else None,
        password=password or None,
    )


def operator_client(settings: Settings, instance: Instance = Instance.STATE) -> Redis:
    """A client for the operator's tools, with the password from the environment or the platform's secrets
    file (as `make up` wrote it)."""
    from spiral_common.auth import secrets_file  # auth reads the settings too: imported where used

    return connect(settings, "operator", instance, {"SPIRAL_ENV_FILE": str(secrets_file(settings)), **os.environ})


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
