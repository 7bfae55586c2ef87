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
    ROUTE_RESPONSES: _ClassVar[Route]
    ROUTE_PASSTHROUGH: _ClassVar[Route]
ROUTE_UNSPECIFIED: Route
ROUTE_CHAT: Route
ROUTE_COMPLETIONS: Route
ROUTE_EMBEDDINGS: Route
ROUTE_RESPONSES: Route
ROUTE_PASSTHROUGH: Route

class InferenceRequest(_message.Message):
    __slots__ = ("request_id", "route", "body", "model", "deadline_unix_ms", "want_usage", "method", "path", "traceparent")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WANT_USAGE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    route: Route
    body: bytes
    model: str
    deadline_unix_ms: int
    want_usage: bool
    method: str
    path: str
    traceparent: str
    def __init__(self, request_id: _Optional[str] = ..., route: _Optional[_Union[Route, str]] = ..., body: _Optional[bytes] = ..., model: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., want_usage: _Optional[bool] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...

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

class TunnelReset(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TunnelFrame(_message.Message):
    __slots__ = ("request", "open", "head", "data", "end", "credit", "reset", "more")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    request: int
    open: InferenceRequest
    head: ResponseHead
    data: bytes
    end: ResponseEnd
    credit: int
    reset: TunnelReset
    more: bool
    def __init__(self, request: _Optional[int] = ..., open: _Optional[_Union[InferenceRequest, _Mapping]] = ..., head: _Optional[_Union[ResponseHead, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[ResponseEnd, _Mapping]] = ..., credit: _Optional[int] = ..., reset: _Optional[_Union[TunnelReset, _Mapping]] = ..., more: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "capacity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity: int
    def __init__(self, name: _Optional[str] = ..., capacity: _Optional[int] = ...) -> None: ...

class Announcement(_message.Message):
    __slots__ = ("peer_id", "namespace", "models", "capacity", "in_flight", "queue_depth", "ttft_ms_ema", "decode_tps_ema", "backend_healthy", "version", "seq", "timestamp_ms", "name", "routes")
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
    ROUTES_FIELD_NUMBER: _ClassVar[int]
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
    routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peer_id: _Optional[bytes] = ..., namespace: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., capacity: _Optional[int] = ..., in_flight: _Optional[int] = ..., queue_depth: _Optional[int] = ..., ttft_ms_ema: _Optional[float] = ..., decode_tps_ema: _Optional[float] = ..., backend_healthy: _Optional[bool] = ..., version: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., name: _Optional[str] = ..., routes: _Optional[_Iterable[str]] = ...) -> None: ...

class GatewayCertificate(_message.Message):
    __slots__ = ("network_key", "gateway_peer_id", "not_before_ms", "not_after_ms", "serial")
    NETWORK_KEY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    network_key: bytes
    gateway_peer_id: bytes
    not_before_ms: int
    not_after_ms: int
    serial: int
    def __init__(self, network_key: _Optional[bytes] = ..., gateway_peer_id: _Optional[bytes] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ..., serial: _Optional[int] = ...) -> None: ...

class Certified(_message.Message):
    __slots__ = ("certificate", "signature")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    signature: bytes
    def __init__(self, certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Revocations(_message.Message):
    __slots__ = ("network_key", "peer_ids", "issued_ms")
    NETWORK_KEY_FIELD_NUMBER: _ClassVar[int]
    PEER_IDS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_MS_FIELD_NUMBER: _ClassVar[int]
    network_key: bytes
    peer_ids: _containers.RepeatedScalarFieldContainer[bytes]
    issued_ms: int
    def __init__(self, network_key: _Optional[bytes] = ..., peer_ids: _Optional[_Iterable[bytes]] = ..., issued_ms: _Optional[int] = ...) -> None: ...

class SignedRevocations(_message.Message):
    __slots__ = ("revocations", "signature")
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    revocations: bytes
    signature: bytes
    def __init__(self, revocations: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GatewayRecord(_message.Message):
    __slots__ = ("certificate", "addrs", "issued_ms", "signature")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    certificate: Certified
    addrs: _containers.RepeatedScalarFieldContainer[str]
    issued_ms: int
    signature: bytes
    def __init__(self, certificate: _Optional[_Union[Certified, _Mapping]] = ..., addrs: _Optional[_Iterable[str]] = ..., issued_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GatewayList(_message.Message):
    __slots__ = ("records", "revocations")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[GatewayRecord]
    revocations: SignedRevocations
    def __init__(self, records: _Optional[_Iterable[_Union[GatewayRecord, _Mapping]]] = ..., revocations: _Optional[_Union[SignedRevocations, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("announcement",)
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    announcement: Announcement
    def __init__(self, announcement: _Optional[_Union[Announcement, _Mapping]] = ...) -> None: ...

class Intro(_message.Message):
    __slots__ = ("record", "nonce", "revocations")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    record: GatewayRecord
    nonce: bytes
    revocations: SignedRevocations
    def __init__(self, record: _Optional[_Union[GatewayRecord, _Mapping]] = ..., nonce: _Optional[bytes] = ..., revocations: _Optional[_Union[SignedRevocations, _Mapping]] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("accepted", "reason", "gateways", "credentials_refused")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    gateways: GatewayList
    credentials_refused: bool
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., gateways: _Optional[_Union[GatewayList, _Mapping]] = ..., credentials_refused: _Optional[bool] = ...) -> None: ...

class GatewayControl(_message.Message):
    __slots__ = ("intro", "welcome", "gateways")
    INTRO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    intro: Intro
    welcome: Welcome
    gateways: GatewayList
    def __init__(self, intro: _Optional[_Union[Intro, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., gateways: _Optional[_Union[GatewayList, _Mapping]] = ...) -> None: ...

class ControlFrame(_message.Message):
    __slots__ = ("hello", "heartbeat", "proof")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Announcement
    proof: Proof
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Announcement, _Mapping]] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ...) -> None: ...
