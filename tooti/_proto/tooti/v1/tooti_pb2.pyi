from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Route(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_UNSPECIFIED: _ClassVar[Route]
    ROUTE_CHAT: _ClassVar[Route]
    ROUTE_COMPLETIONS: _ClassVar[Route]
    ROUTE_EMBEDDINGS: _ClassVar[Route]
ROUTE_UNSPECIFIED: Route
ROUTE_CHAT: Route
ROUTE_COMPLETIONS: Route
ROUTE_EMBEDDINGS: Route

class InferenceRequest(_message.Message):
    __slots__ = ("request_id", "route", "body", "model", "deadline_unix_ms", "want_usage", "traceparent")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WANT_USAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    route: Route
    body: bytes
    model: str
    deadline_unix_ms: int
    want_usage: bool
    traceparent: str
    def __init__(self, request_id: _Optional[str] = ..., route: _Optional[_Union[Route, str]] = ..., body: _Optional[bytes] = ..., model: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., want_usage: _Optional[bool] = ..., traceparent: _Optional[str] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GatewayFrame(_message.Message):
    __slots__ = ("request", "cancel")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    request: InferenceRequest
    cancel: Cancel
    def __init__(self, request: _Optional[_Union[InferenceRequest, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ...) -> None: ...

class ResponseHead(_message.Message):
    __slots__ = ("status", "content_type")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    status: int
    content_type: str
    def __init__(self, status: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("status", "code", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: int
    code: str
    message: str
    def __init__(self, status: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ResponseEnd(_message.Message):
    __slots__ = ("usage", "error")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    error: Error
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ResponseFrame(_message.Message):
    __slots__ = ("head", "data", "end")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    head: ResponseHead
    data: bytes
    end: ResponseEnd
    def __init__(self, head: _Optional[_Union[ResponseHead, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[ResponseEnd, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "capacity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity: int
    def __init__(self, name: _Optional[str] = ..., capacity: _Optional[int] = ...) -> None: ...

class Announcement(_message.Message):
    __slots__ = ("peer_id", "namespace", "models", "capacity", "in_flight", "queue_depth", "ttft_ms_ema", "decode_tps_ema", "backend_healthy", "version", "seq", "timestamp_ms", "name")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_EMA_FIELD_NUMBER: _ClassVar[int]
    DECODE_TPS_EMA_FIELD_NUMBER: _ClassVar[int]
    BACKEND_HEALTHY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    peer_id: bytes
    namespace: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    capacity: int
    in_flight: int
    queue_depth: int
    ttft_ms_ema: float
    decode_tps_ema: float
    backend_healthy: bool
    version: str
    seq: int
    timestamp_ms: int
    name: str
    def __init__(self, peer_id: _Optional[bytes] = ..., namespace: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., capacity: _Optional[int] = ..., in_flight: _Optional[int] = ..., queue_depth: _Optional[int] = ..., ttft_ms_ema: _Optional[float] = ..., decode_tps_ema: _Optional[float] = ..., backend_healthy: _Optional[bool] = ..., version: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("announcement",)
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    announcement: Announcement
    def __init__(self, announcement: _Optional[_Union[Announcement, _Mapping]] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce", "scheme", "salt", "time_cost", "memory_cost", "parallelism", "hash_len")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    TIME_COST_FIELD_NUMBER: _ClassVar[int]
    MEMORY_COST_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    HASH_LEN_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    scheme: str
    salt: bytes
    time_cost: int
    memory_cost: int
    parallelism: int
    hash_len: int
    def __init__(self, nonce: _Optional[bytes] = ..., scheme: _Optional[str] = ..., salt: _Optional[bytes] = ..., time_cost: _Optional[int] = ..., memory_cost: _Optional[int] = ..., parallelism: _Optional[int] = ..., hash_len: _Optional[int] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("mac",)
    MAC_FIELD_NUMBER: _ClassVar[int]
    mac: bytes
    def __init__(self, mac: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("accepted", "reason", "gateway_peer_id", "gateways")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    gateway_peer_id: bytes
    gateways: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., gateway_peer_id: _Optional[bytes] = ..., gateways: _Optional[_Iterable[str]] = ...) -> None: ...

class GatewayControl(_message.Message):
    __slots__ = ("challenge", "welcome")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    challenge: Challenge
    welcome: Welcome
    def __init__(self, challenge: _Optional[_Union[Challenge, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ...) -> None: ...

class ControlFrame(_message.Message):
    __slots__ = ("hello", "heartbeat", "proof")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Announcement
    proof: Proof
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Announcement, _Mapping]] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ...) -> None: ...
