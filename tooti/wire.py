"""The wire messages, generated from ``proto/tooti/v1/tooti.proto``.

Import messages from here (``from tooti.wire import pb``) so the generated module's
location is known in one place.
"""

from tooti._proto.tooti.v1 import tooti_pb2 as pb

#: The most requests one node may run at once (``node.max_concurrency``), and so the largest
#: capacity a heartbeat may claim and the most exchanges one tunnel may hold open.
MAX_CONCURRENCY = 16384

__all__ = ["MAX_CONCURRENCY", "pb"]
