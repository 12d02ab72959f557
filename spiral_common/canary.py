"""The canary knob: the share of router traffic Envoy sends to the canary router, changed live.

Envoy's route splits router traffic between two weighted clusters whose weights live in Envoy's
runtime (`spiral.routers.main_first`, `spiral.routers.canary_first`); SetCanaryWeight changes them
through the admin interface (its unix socket), so no restart is needed and open streams stay where
they are. The weight in force is also kept in `<run_dir>/canary_weight`, which the next render reads,
so it survives a restart of the platform (SPIRAL_CANARY_WEIGHT_PERCENT is only the first value).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from spiral_common.config import Settings
from spiral_common.envoy_admin import admin_call
from spiral_common.errors import InvalidArgument, Unavailable

RUNTIME_PREFIX = "spiral.routers"


def _weight_file(settings: Settings) -> Path:
    return settings.run_path / "canary_weight"


def current_weight(settings: Settings) -> int:
    """The weight in force: the last one set, else the profile's."""
    try:
        return int(_weight_file(settings).read_text().strip())
    except (OSError, ValueError):
        return settings.envoy.canary_weight_percent


def runtime_values(percent: int) -> dict[str, str]:
    return {f"{RUNTIME_PREFIX}.main_first": str(100 - percent), f"{RUNTIME_PREFIX}.canary_first": str(percent)}


def apply_to_envoy(settings: Settings, percent: int) -> None:
    """Set the split in the running Envoy's runtime (admin interface, on its socket)."""
    query = urllib.parse.urlencode(runtime_values(percent))
    try:
        admin_call(settings.envoy_admin_path, f"/runtime_modify?{query}", method="POST")
    except OSError as exc:
        raise Unavailable(
            f"Envoy's admin interface did not take the weight: {exc}", reason="ENVOY_UNAVAILABLE"
        ) from exc


def set_weight(settings: Settings, percent: int) -> int:
    """Put `percent` in force in Envoy and keep it across restarts; return the previous weight."""
    if not 0 <= percent <= 100:
        raise InvalidArgument(f"percent must be in [0, 100], got {percent}", reason="BAD_WEIGHT", field="percent")
    previous = current_weight(settings)
    apply_to_envoy(settings, percent)
    kept = _weight_file(settings).with_suffix(".next")
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(f"{percent}\n")
    os.replace(kept, _weight_file(settings))
    return previous
