"""Settings objects as rule ``params`` and back.

Each rule receives as ``params`` exactly the slice of settings its step reads, as a canonical dict
(:func:`to_params`: keys sorted at every level), so reordering keys in a YAML file changes nothing
and a change to one model or one rule's settings reruns only what reads them. Scripts turn a slice
back into its typed object with :func:`from_params`.
"""

from __future__ import annotations

import dataclasses
import typing

OMIT_AT_DEFAULT = "omit_at_default"
"""Field metadata of settings added after runs were trained: at its default the field is left out of
the params, so that upgrading arena-pref reruns none of those jobs (:func:`build` fills it back)."""


def canonical(value):
    """``value`` as plain data with dict keys sorted at every level (tuples become lists)."""
    if dataclasses.is_dataclass(value):
        value = {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if not (f.metadata.get(OMIT_AT_DEFAULT) and getattr(value, f.name) == f.default)
        }
    if isinstance(value, dict):
        return {str(k): canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def to_params(settings):
    """A settings object as a rule's ``params`` value: canonical plain data, so Snakemake sees
    the same params whatever order the YAML keys came in."""
    return canonical(settings)


def build(cls, data):
    """A settings dataclass from plain data (a config slice or a rule's params): nested settings
    built recursively, lists as tuples; a missing or unknown key is an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    kwargs = {}
    omitted = {f.name for f in dataclasses.fields(cls) if f.metadata.get(OMIT_AT_DEFAULT)}
    for name in names:
        if name in omitted and name not in data:
            continue  # its default
        value, hint = data[name], hints[name]
        if dataclasses.is_dataclass(hint):
            value = build(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif float in (hint, *typing.get_args(hint)) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # ``epochs: 1`` and ``epochs: 1.0`` are one setting
        kwargs[name] = value
    return cls(**kwargs)


def from_params(cls, params):
    """The settings object a rule's ``params`` value (:func:`to_params`) stands for."""
    return build(cls, params)
