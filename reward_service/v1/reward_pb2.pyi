from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_INVALID: _ClassVar[Status]
    STATUS_TIMEOUT: _ClassVar[Status]
    STATUS_ERROR: _ClassVar[Status]
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_INVALID: Status
STATUS_TIMEOUT: Status
STATUS_ERROR: Status

class MathReference(_message.Message):
    __slots__ = ("ground_truth",)
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    ground_truth: str
    def __init__(self, ground_truth: _Optional[str] = ...) -> None: ...

class StemReference(_message.Message):
    __slots__ = ("ground_truth", "choices", "judge")
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    ground_truth: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    judge: bool
    def __init__(self, ground_truth: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., judge: _Optional[bool] = ...) -> None: ...

class CodeTest(_message.Message):
    __slots__ = ("input", "output")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    input: str
    output: str
    def __init__(self, input: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class CodeReference(_message.Message):
    __slots__ = ("tests", "fn_name", "language", "time_limit_s", "assert_code")
    TESTS_FIELD_NUMBER: _ClassVar[int]
    FN_NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    ASSERT_CODE_FIELD_NUMBER: _ClassVar[int]
    tests: _containers.RepeatedCompositeFieldContainer[CodeTest]
    fn_name: str
    language: str
    time_limit_s: float
    assert_code: str
    def __init__(self, tests: _Optional[_Iterable[_Union[CodeTest, _Mapping]]] = ..., fn_name: _Optional[str] = ..., language: _Optional[str] = ..., time_limit_s: _Optional[float] = ..., assert_code: _Optional[str] = ...) -> None: ...

class ReasoningGymReference(_message.Message):
    __slots__ = ("dataset", "entry_json", "config_json")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    entry_json: str
    config_json: str
    def __init__(self, dataset: _Optional[str] = ..., entry_json: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class IfevalReference(_message.Message):
    __slots__ = ("instruction_id_list", "kwargs", "prompt")
    INSTRUCTION_ID_LIST_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    instruction_id_list: _containers.RepeatedScalarFieldContainer[str]
    kwargs: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    prompt: str
    def __init__(self, instruction_id_list: _Optional[_Iterable[str]] = ..., kwargs: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., prompt: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("id", "domain", "response", "math", "stem", "code", "reasoning_gym", "ifeval", "json", "options", "truncated")
    ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MATH_FIELD_NUMBER: _ClassVar[int]
    STEM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASONING_GYM_FIELD_NUMBER: _ClassVar[int]
    IFEVAL_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    domain: str
    response: str
    math: MathReference
    stem: StemReference
    code: CodeReference
    reasoning_gym: ReasoningGymReference
    ifeval: IfevalReference
    json: str
    options: _struct_pb2.Struct
    truncated: bool
    def __init__(self, id: _Optional[str] = ..., domain: _Optional[str] = ..., response: _Optional[str] = ..., math: _Optional[_Union[MathReference, _Mapping]] = ..., stem: _Optional[_Union[StemReference, _Mapping]] = ..., code: _Optional[_Union[CodeReference, _Mapping]] = ..., reasoning_gym: _Optional[_Union[ReasoningGymReference, _Mapping]] = ..., ifeval: _Optional[_Union[IfevalReference, _Mapping]] = ..., json: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("id", "reward", "status", "detail", "metrics")
    ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    id: str
    reward: float
    status: Status
    detail: str
    metrics: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., reward: _Optional[float] = ..., status: _Optional[_Union[Status, str]] = ..., detail: _Optional[str] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ...) -> None: ...

class ScoreStreamRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ...) -> None: ...

class ScoreStreamResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ...) -> None: ...

class ListDomainsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DomainInfo(_message.Message):
    __slots__ = ("name", "description", "default_timeout_s", "reference_schema_json", "options_schema_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    default_timeout_s: float
    reference_schema_json: str
    options_schema_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., default_timeout_s: _Optional[float] = ..., reference_schema_json: _Optional[str] = ..., options_schema_json: _Optional[str] = ...) -> None: ...

class ListDomainsResponse(_message.Message):
    __slots__ = ("domains",)
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[DomainInfo]
    def __init__(self, domains: _Optional[_Iterable[_Union[DomainInfo, _Mapping]]] = ...) -> None: ...
