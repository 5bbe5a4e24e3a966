"""The one place where Arrow schemas are derived from the pydantic models.

Shards, run outputs and readers all call :func:`arrow_schema`, so a field added to a
model appears in every Arrow table without a second definition to keep in step.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from functools import cache
from typing import Any, Literal, TypeVar, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

from any2capins.schemas._record import SCHEMA_VERSION, Failure, Record

M = TypeVar("M", bound=BaseModel)

SCHEMA_VERSION_KEY = b"any2capins.schema_version"
MODEL_KEY = b"any2capins.model"


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unions other than Optional are not supported: {tp!r}")
        return args[0], True
    return tp, False


def arrow_type(tp: Any) -> pa.DataType:
    """Arrow type for a Python/pydantic annotation."""
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return pa.struct([arrow_field(name, f.annotation) for name, f in tp.model_fields.items()])
    if origin is list:
        (item,) = get_args(tp)
        return pa.list_(arrow_type(item))
    if origin is dict:
        # A list of key/value structs rather than an Arrow map: HF datasets cannot read maps.
        key, value = get_args(tp)
        return pa.list_(
            pa.struct(
                [pa.field("key", arrow_type(key), nullable=False), ("value", arrow_type(value))]
            )
        )
    if origin is Literal:
        return pa.string()
    if tp is str:
        return pa.string()
    if tp is bool:
        return pa.bool_()
    if tp is int:
        return pa.int64()
    if tp is float:
        return pa.float64()
    if tp is datetime:
        return pa.timestamp("us", tz="UTC")
    if tp is bytes:
        return pa.binary()
    raise TypeError(f"no Arrow mapping for {tp!r}")


def arrow_field(name: str, annotation: Any) -> pa.Field:
    _, optional = _strip_optional(annotation)
    return pa.field(name, arrow_type(annotation), nullable=optional)


@cache
def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """Arrow schema of a top-level model, with the schema version in its metadata."""
    fields = [arrow_field(name, f.annotation) for name, f in model.model_fields.items()]
    return pa.schema(
        fields,
        metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode(), MODEL_KEY: model.__name__.encode()},
    )


def record_arrow_schema() -> pa.Schema:
    return arrow_schema(Record)


def failure_arrow_schema() -> pa.Schema:
    return arrow_schema(Failure)


Convert = typing.Callable[[Any], Any]


def _hashable(annotation: Any) -> Any:
    """A field's annotation, as the key of the per-type converter caches."""
    return annotation


@cache
def _to_arrow_converter(tp: Any) -> Convert | None:
    """What turns a ``model_dump()`` value of type TP into its Arrow shape (dicts as key/value
    lists), built once per type; ``None`` when the value needs no change."""
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = [
            (name, conv)
            for name, f in tp.model_fields.items()
            if (conv := _to_arrow_converter(_hashable(f.annotation))) is not None
        ]
        if not fields:
            return None

        def model(value: Any) -> Any:
            if value is None:
                return None
            out = dict(value)
            for name, conv in fields:
                out[name] = conv(out[name])
            return out

        return model
    if origin is list:
        (item_tp,) = get_args(tp)
        item = _to_arrow_converter(item_tp)
        if item is None:
            return None
        return lambda value: None if value is None else [item(v) for v in value]
    if origin is dict:
        _, vt = get_args(tp)
        inner = _to_arrow_converter(vt)
        if inner is None:
            return lambda value: (
                None if value is None else [{"key": k, "value": v} for k, v in value.items()]
            )
        return lambda value: (
            None if value is None else [{"key": k, "value": inner(v)} for k, v in value.items()]
        )
    return None


def to_arrow_row(item: BaseModel) -> dict[str, Any]:
    """One validated model as a row of :func:`arrow_schema`: ``model_dump()`` (in pydantic's
    core, no validation) with dicts turned into key/value lists."""
    conv = _to_arrow_converter(type(item))
    data = item.model_dump()
    out: dict[str, Any] = conv(data) if conv is not None else data
    return out


def to_table(items: typing.Sequence[BaseModel], model: type[BaseModel]) -> pa.Table:
    """Models -> Arrow table with :func:`arrow_schema` of ``model``; the items were validated
    when they were made, so nothing is validated again here."""
    schema = arrow_schema(model)
    for item in items:
        if not isinstance(item, model):
            raise TypeError(f"expected {model.__name__}, got {type(item).__name__}")
    return pa.Table.from_pylist([to_arrow_row(item) for item in items], schema=schema)


@cache
def _from_arrow_converter(tp: Any) -> Convert | None:
    """What undoes the Arrow shape changes of a value of type TP (key/value lists back to
    dicts), built once per type; ``None`` when the value needs no change."""
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = [
            (name, conv)
            for name, f in tp.model_fields.items()
            if (conv := _from_arrow_converter(_hashable(f.annotation))) is not None
        ]
        if not fields:
            return None

        def model(value: Any) -> Any:
            if value is None:
                return None
            out = dict(value)
            for name, conv in fields:
                out[name] = conv(out.get(name))
            return out

        return model
    if origin is list:
        (item_tp,) = get_args(tp)
        item = _from_arrow_converter(item_tp)
        if item is None:
            return None
        return lambda value: None if value is None else [item(v) for v in value]
    if origin is dict:
        _, vt = get_args(tp)
        inner = _from_arrow_converter(vt) or (lambda v: v)

        def mapping(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, dict):
                return {k: inner(v) for k, v in value.items()}
            return {kv["key"]: inner(kv["value"]) for kv in value}

        return mapping
    return None


def check_schema_version(schema: pa.Schema) -> None:
    """Refuse a table written with another schema version."""
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise ValueError(
            f"table has schema version {version.decode()}, this code reads {SCHEMA_VERSION}"
        )


def from_arrow_row(row: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """One ``to_pylist()`` row back in the models' shape (dicts restored), not validated."""
    conv = _from_arrow_converter(model)
    out: dict[str, Any] = conv(row) if conv is not None else row
    return out


def from_table(table: pa.Table, model: type[M]) -> list[M]:
    """Arrow table -> models; refuses a table written with another schema version."""
    check_schema_version(table.schema)
    conv = _from_arrow_converter(model)
    names = list(model.model_fields)
    rows = []
    for row in table.to_pylist():
        data = {name: row.get(name) for name in names}
        rows.append(model.model_validate(conv(data) if conv is not None else data))
    return rows
