"""Closed sets shared by several services, as Python enums whose values are the contracts' enum numbers.

`Tier` and `Outcome` mirror `spiral.router.v1.Tier` / `TierOutcome`, `Track` mirrors `spiral.common.v1.Track`.
The proto enums are the source: a unit test checks that every proto value has its member here and back.
Each member's `label` is the one word used for it in metrics labels, logs, the decision trace's detail and
the settings (`"cache"`, `"local_fallback"`, `"canary"`...).
"""

from __future__ import annotations

import enum
from typing import Self, cast

from spiral.common.v1 import track_pb2
from spiral.router.v1 import router_pb2
from spiral_common.errors import InvalidArgument


class _Labelled(enum.IntEnum):
    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Self:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"{label!r} is not a {cls.__name__} ({', '.join(m.label for m in cls)})") from None


class Tier(_Labelled):
    """A stage of the cascade, or what served an answer."""

    CACHE = router_pb2.TIER_CACHE
    PATTERN = router_pb2.TIER_PATTERN
    HEAD = router_pb2.TIER_HEAD
    COUNCIL = router_pb2.TIER_COUNCIL
    CLOUD = router_pb2.TIER_CLOUD
    # The council's best answer below the vote threshold, served because the cloud was out of reach.
    LOCAL_FALLBACK = router_pb2.TIER_LOCAL_FALLBACK

    @property
    def proto(self) -> router_pb2.Tier:
        return cast(router_pb2.Tier, int(self))


class Outcome(_Labelled):
    """What happened at one tier of one request."""

    ANSWERED = router_pb2.TIER_OUTCOME_ANSWERED
    MISSED = router_pb2.TIER_OUTCOME_MISSED
    FAILED = router_pb2.TIER_OUTCOME_FAILED
    SKIPPED = router_pb2.TIER_OUTCOME_SKIPPED
    REFUSED = router_pb2.TIER_OUTCOME_REFUSED

    @property
    def proto(self) -> router_pb2.TierOutcome:
        return cast(router_pb2.TierOutcome, int(self))


class Track(_Labelled):
    """One of the two deployments serving side by side: main, and the canary trying a new adapter."""

    MAIN = track_pb2.TRACK_MAIN
    CANARY = track_pb2.TRACK_CANARY

    @property
    def proto(self) -> track_pb2.Track:
        return cast(track_pb2.Track, int(self))


# Tiers whose answers may teach the miner and the trainer (when they ended naturally): the cloud's, and a
# council answer that the vote accepted. A lone head's answer is the student's own; the cache and the
# pattern tier repeat earlier answers; a local fallback is an answer the vote rejected.
TEACHING_TIERS = frozenset({Tier.CLOUD, Tier.COUNCIL})

BOTH_TRACKS = (Track.MAIN, Track.CANARY)


def tracks_to_switch(track: int, *, legacy_canary_only: bool = False) -> tuple[Track, ...]:
    """The tracks an adapter switch touches, from a request's `track` (its deprecated boolean twin read only
    when `track` is unset): the canary alone, or both. Main alone is refused: main changes adapter only by
    promotion, which switches both tracks."""
    if track == Track.CANARY or (not track and legacy_canary_only):
        return (Track.CANARY,)
    if track == Track.MAIN:
        raise InvalidArgument(
            "an adapter switch takes the canary track or both tracks, never main alone",
            reason="BAD_TRACK",
            field="track",
        )
    if track:
        raise InvalidArgument(f"unknown track {track}", reason="BAD_TRACK", field="track")
    return BOTH_TRACKS
