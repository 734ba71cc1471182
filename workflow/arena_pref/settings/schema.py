"""The config's JSON schema (``workflow/schemas/config.schema.yaml``): where every key is documented
and where defaults live. :func:`validate` checks a config against it, fills the defaults, and
reports the first problem in one line naming the key."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from arena_pref.errors import InputError

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def _schema():
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def _validator():
    """The schema's validator, extended to fill in defaults (copies: no two places share one)."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from properties(validator, props, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(_schema())


def _where(path):
    return "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _hint(key, known, instance):
    """Why a key is unknown here: a typo of a known one, or a LoRA model's key on another kind."""
    if match := difflib.get_close_matches(key, known, 1):
        return f" (did you mean '{match[0]}'?)"
    lora_keys = _validator().schema["$defs"]["llm_model"]["properties"]
    if instance.get("kind") in ("features", "judge") and key in lora_keys:
        return f" (a LoRA model's key; this model is kind {instance['kind']})"
    return ""


def _one_line(error):
    """A validation error as one line naming the key (and the closest known key for a typo)."""
    from jsonschema.exceptions import best_match

    error = best_match([error])
    if error.validator == "pattern" and "propertyNames" in error.relative_schema_path:
        return (
            f"{_where(error.absolute_path)}: name {error.instance!r} is not allowed: "
            f"{' '.join(error.schema.get('description', error.message).split())}"
        )
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        for branch in error.schema.get("allOf", []):
            known |= set(branch.get("then", {}).get("properties", {}))
        unknown = [k for k in error.instance if k not in known]
        hints = [f"unknown key '{k}'{_hint(k, known, error.instance)}" for k in unknown]
        if hints:
            return f"{_where(error.absolute_path)}: {'; '.join(hints)}"
    return f"{_where(error.absolute_path)}: {error.message}"


def validate(config):
    """``config`` checked against the schema, with defaults filled in (a copy); the first problem
    raises :class:`InputError` in one line naming the key."""
    from jsonschema.exceptions import best_match

    config = copy.deepcopy(dict(config))
    errors = list(_validator().iter_errors(config))
    # a wrong backbone kind is the error to report, not the keys of the kind meant
    kinds = [e for e in errors if list(e.absolute_path)[-1:] == ["kind"]]
    error = best_match(kinds or errors)
    if error is not None:
        raise InputError(_one_line(error))
    for model in config["models"].values():
        if model["kind"] == "llm" and model["full_fit"] is None:
            model["full_fit"] = config["cv"]["full_fit"]  # a model's null follows cv.full_fit
    return config
