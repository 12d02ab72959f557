from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Track(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACK_UNSPECIFIED: _ClassVar[Track]
    TRACK_MAIN: _ClassVar[Track]
    TRACK_CANARY: _ClassVar[Track]
TRACK_UNSPECIFIED: Track
TRACK_MAIN: Track
TRACK_CANARY: Track
