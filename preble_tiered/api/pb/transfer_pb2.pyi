from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeaseRequest(_message.Message):
    __slots__ = ("namespace", "hashes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, namespace: _Optional[str] = ..., hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class LeasedBlock(_message.Message):
    __slots__ = ("hash", "parent", "address", "length", "checksum")
    HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    hash: int
    parent: int
    address: int
    length: int
    checksum: int
    def __init__(self, hash: _Optional[int] = ..., parent: _Optional[int] = ..., address: _Optional[int] = ..., length: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("lease_id", "session", "protocol", "blocks", "missing", "ttl_ms")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    session: str
    protocol: str
    blocks: _containers.RepeatedCompositeFieldContainer[LeasedBlock]
    missing: str
    ttl_ms: int
    def __init__(self, lease_id: _Optional[int] = ..., session: _Optional[str] = ..., protocol: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[LeasedBlock, _Mapping]]] = ..., missing: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class PullOpen(_message.Message):
    __slots__ = ("namespace", "hashes", "max_piece_bytes", "window")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    MAX_PIECE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    hashes: _containers.RepeatedScalarFieldContainer[int]
    max_piece_bytes: int
    window: int
    def __init__(self, namespace: _Optional[str] = ..., hashes: _Optional[_Iterable[int]] = ..., max_piece_bytes: _Optional[int] = ..., window: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("pieces",)
    PIECES_FIELD_NUMBER: _ClassVar[int]
    pieces: int
    def __init__(self, pieces: _Optional[int] = ...) -> None: ...

class PullClientMessage(_message.Message):
    __slots__ = ("open", "credit")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    open: PullOpen
    credit: Credit
    def __init__(self, open: _Optional[_Union[PullOpen, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ...) -> None: ...

class BlockPiece(_message.Message):
    __slots__ = ("hash", "parent", "total_bytes", "offset", "data", "checksum")
    HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    hash: int
    parent: int
    total_bytes: int
    offset: int
    data: bytes
    checksum: int
    def __init__(self, hash: _Optional[int] = ..., parent: _Optional[int] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., checksum: _Optional[int] = ...) -> None: ...

class PullEnd(_message.Message):
    __slots__ = ("blocks_sent", "missing")
    BLOCKS_SENT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    blocks_sent: int
    missing: str
    def __init__(self, blocks_sent: _Optional[int] = ..., missing: _Optional[str] = ...) -> None: ...

class PullServerMessage(_message.Message):
    __slots__ = ("piece", "end")
    PIECE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    piece: BlockPiece
    end: PullEnd
    def __init__(self, piece: _Optional[_Union[BlockPiece, _Mapping]] = ..., end: _Optional[_Union[PullEnd, _Mapping]] = ...) -> None: ...
