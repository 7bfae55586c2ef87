"""Protocol ids and topic names: the network's versioned vocabulary, in one place."""

from libp2p.custom_types import TProtocol

#: gateway -> node: the inference tunnel, one stream per pair carrying every exchange (TunnelFrame)
INFERENCE = TProtocol("/tooti/inference/2.0.0")
#: node -> gateway: Hello / (Challenge / Proof) / Welcome, then gateway-list updates and
#: fallback heartbeats for as long as the node is connected
CONTROL = TProtocol("/tooti/control/1.0.0")
#: gateway <-> gateway: exchange of dialable gateway addresses (pb.Welcome as the message)
PEERING = TProtocol("/tooti/peering/1.0.0")
#: gossipsub topic for signed heartbeats (Announcement)
HEARTBEAT_TOPIC = "/tooti/heartbeat/1"
#: gossipsub topic where gateways announce their dialable addresses (Welcome as payload)
GATEWAYS_TOPIC = "/tooti/gateways/1"
#: private Kademlia DHT protocol (never the public IPFS DHT)
DHT_PROTOCOL = TProtocol("/tooti/kad/1.0.0")
