"""The wire messages, generated from ``proto/tooti/v1/tooti.proto``.

Import messages from here (``from tooti.wire import pb``) so the generated module's
location is known in one place.
"""

from tooti._proto.tooti.v1 import tooti_pb2 as pb

__all__ = ["pb"]
