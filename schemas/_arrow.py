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

from schemas._record import SCHEMA_VERSION, Failure, Record

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


def _from_arrow_value(tp: Any, value: Any) -> Any:
    """Undo the shape changes made for Arrow (dicts are stored as key/value lists)."""
    if value is None:
        return None
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {
            name: _from_arrow_value(f.annotation, value.get(name))
            for name, f in tp.model_fields.items()
        }
    if origin is list:
        (item,) = get_args(tp)
        return [_from_arrow_value(item, v) for v in value]
    if origin is dict:
        _, vt = get_args(tp)
        if isinstance(value, dict):
            return {k: _from_arrow_value(vt, v) for k, v in value.items()}
        return {kv["key"]: _from_arrow_value(vt, kv["value"]) for kv in value}
    return value


def _to_arrow_value(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {
            name: _to_arrow_value(f.annotation, getattr(value, name))
            for name, f in tp.model_fields.items()
        }
    if origin is list:
        (item,) = get_args(tp)
        return [_to_arrow_value(item, v) for v in value]
    if origin is dict:
        _, vt = get_args(tp)
        return [{"key": k, "value": _to_arrow_value(vt, v)} for k, v in value.items()]
    return value


def to_table(items: typing.Sequence[BaseModel], model: type[BaseModel]) -> pa.Table:
    """Models -> Arrow table with :func:`arrow_schema` of ``model``."""
    schema = arrow_schema(model)
    columns: dict[str, list[Any]] = {name: [] for name in model.model_fields}
    for item in items:
        if not isinstance(item, model):
            raise TypeError(f"expected {model.__name__}, got {type(item).__name__}")
        for name, f in model.model_fields.items():
            columns[name].append(_to_arrow_value(f.annotation, getattr(item, name)))
    return pa.Table.from_pydict(columns, schema=schema)


def from_table(table: pa.Table, model: type[M]) -> list[M]:
    """Arrow table -> models; refuses a table written with another schema version."""
    meta = table.schema.metadata or {}
    version = meta.get(SCHEMA_VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise ValueError(
            f"table has schema version {version.decode()}, this code reads {SCHEMA_VERSION}"
        )
    rows = table.to_pylist()
    return [
        model.model_validate(
            {
                name: _from_arrow_value(f.annotation, row.get(name))
                for name, f in model.model_fields.items()
            }
        )
        for row in rows
    ]
