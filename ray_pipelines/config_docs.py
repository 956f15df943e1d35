"""Config you can discover without reading the source: every key of a job's config model.

- :func:`keys_help`: the keys with their types, defaults and descriptions (``--help``).
- :func:`config_yaml`: a validated config, every default filled in, as YAML with each key's
  description as a comment (``--print-config``); loading it gives the same config fingerprint.
- :func:`json_schema`: the config model's JSON schema (``--schema``).
- :func:`packaged_configs`: the example configs shipped in the package (``ray-pipelines configs``).
"""

from __future__ import annotations

import json
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import (
    PACKAGED_CONFIGS,
    CommonConfig,
    ConfigError,
    kinds_of,
    models_in,
    packaged_config_names,
    resolve_config_path,
)

WIDTH = 100


def _type_name(annotation: Any) -> str:
    """A short, readable type: ``int``, ``float or null``, ``first|all``, ``list of str``, ``{min, max}``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    models = models_in(annotation)
    if len(models) > 1 and all(kinds_of(m) for m in models):  # a discriminated union (teachers)
        kinds = "|".join(k for m in models for k in kinds_of(m))
        shown = f"mapping with kind: {kinds}"
        return f"list of ({shown})" if origin in (list, tuple) else shown
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin in (list, tuple, set, frozenset):
        inner = dict.fromkeys(_type_name(a) for a in args if a is not Ellipsis)
        if not inner:
            return "list"
        shown = " or ".join(inner)  # parenthesized: "list of (float or null) or null" (bounds)
        return f"list of ({shown})" if " or " in shown else f"list of {shown}"
    if origin is dict or annotation is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if models:
        names = list(models[0].model_fields)
        return "{" + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") + "}"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _shown(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=str)


def _one_model(field: FieldInfo) -> type[BaseModel] | None:
    """The nested model a field holds when it is a section: exactly one model, or null
    (``synth``, ``waveform_pool``); not ``actors`` (a number or a model) nor lists."""
    annotation = field.annotation
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if members:
        rest = [m for m in members if m is not type(None)]
        annotation = rest[0] if len(rest) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


# Sections whose further keys are names of the user's choosing, each holding the model that
# ``__pydantic_extra__`` types: the placeholder such a key is listed under, and what it is.
EXTRA_KEYS = {
    "FilterSettings": (
        "<score>",
        "A rule per score, keyed by the score column's name: filter.<score>: {mode: hardcode, bounds: [3.0, "
        "null]}; null takes a rule out, a default rule's too (docs/score.md, Filters).",
    ),
}


def _extra_model(model: type[BaseModel]) -> type[BaseModel] | None:
    """The model each further key of ``model`` holds (a score's filter rule), when its extra keys are typed."""
    if model.model_config.get("extra") != "allow":
        return None
    extra = typing.get_type_hints(model).get("__pydantic_extra__")
    values = typing.get_args(extra)[1:] if typing.get_origin(extra) is dict else ()
    models = models_in(values[0]) if values else []
    return models[0] if len(models) == 1 else None


def _section_line(key: str, field: FieldInfo) -> str:
    """``key:  (section)``, or ``(section or null; default null)`` for a section that is off unless given."""
    kind = "section or null; default null" if _default(field) is None else "section"
    return f"  {key}:  ({kind}){' ' + field.description if field.description else ''}"


def keys_help(
    model: type[BaseModel],
    prefix: str = "",
    depth: int = 0,
    skip: tuple[str, ...] = (),
    defaults: BaseModel | None = None,
) -> str:
    """Every key of ``model`` (nested sections as dotted keys): type, default, description.

    ``defaults``: the section's own default value (a built-in pool's entries), whose values are the keys'
    defaults when the section is left out, even where the model alone requires the key (a mask's max_width)."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = prefix + name
        required = field.default is PydanticUndefined and field.default_factory is None
        nested = _one_model(field) if depth < 2 else None
        if nested is not None and not required:
            lines.append(_section_line(key, field))
            own_default = _default(field) if defaults is None else getattr(defaults, name)
            section_default = own_default if isinstance(own_default, nested) else None
            lines.append(keys_help(nested, f"{key}.", depth + 1, defaults=section_default))
            continue
        if defaults is not None:
            given = f"default {_shown(getattr(defaults, name))}"
            detail = f"{given}, required when {prefix.rstrip('.')} is given" if required else given
        else:
            detail = "required" if required else f"default {_shown(_default(field))}"
        lines.append(f"  {key}  ({_type_name(field.annotation)}; {detail})")
        if field.description:
            lines.extend(textwrap.wrap(field.description, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6))
        union = models_in(field.annotation)
        if len(union) > 1 and depth < 2:  # each kind's own keys (teachers[].capacity for kind torchcrepe)
            item = f"{key}[]" if typing.get_origin(field.annotation) in (list, tuple) else key
            for member in union:
                lines.append(f"  {item} with kind: {'|'.join(kinds_of(member))}")
                lines.append(keys_help(member, f"{item}.", depth + 1, skip=("kind",)))
    extra = _extra_model(model)
    if extra is not None:
        placeholder, about = EXTRA_KEYS.get(model.__name__, ("<name>", ""))
        lines.append(f"  {prefix}{placeholder}:  (section or null)")
        lines.extend(textwrap.wrap(about, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6))
        lines.append(keys_help(extra, f"{prefix}{placeholder}.", depth + 1))
    return "\n".join(line for line in lines if line)


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _yaml_lines(
    model: type[BaseModel] | None, data: dict[str, Any], indent: str, commented: frozenset[str] = frozenset()
) -> list[str]:
    lines: list[str] = []
    for key, value in data.items():
        field = model.model_fields.get(key) if model is not None else None
        if field is not None and field.description:
            lines.extend(_comment(field.description, indent))
        nested = _one_model(field) if field is not None else None
        if nested is not None and isinstance(value, dict) and value and key not in commented:
            lines.append(f"{indent}{key}:")
            lines.extend(_yaml_lines(nested, value, indent + "  "))
            continue
        # Lists and mappings of scalars on one line ({min: 1, max: 2}); everything else in block style.
        flow = None if isinstance(value, (list, dict)) else False
        dumped = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=flow, width=WIDTH).rstrip("\n")
        if key in commented:
            lines.append(f"{indent}# (the default, left unset: this config refuses {key} when given explicitly)")
            dumped = "\n".join(f"# {line}" for line in dumped.split("\n"))
        lines.extend(indent + line for line in dumped.split("\n"))
    return lines


def _refused_when_set(config: CommonConfig, data: dict[str, Any]) -> frozenset[str]:
    """Keys left at their default that the config refuses, or fingerprints differently, when given
    explicitly (a validator that asks whether a key was set: the score job's ``model`` without the
    reconstruction scorer). Empty for most configs: then every key is printed as a value."""

    def same(candidate: dict[str, Any]) -> bool:
        try:
            return type(config).model_validate(candidate).fingerprint() == config.fingerprint()
        except ValidationError:
            return False

    if same(data):
        return frozenset()
    kept = {k: v for k, v in data.items() if k in config.model_fields_set}
    refused = set()
    for key in (k for k in data if k not in kept):
        if same({**kept, key: data[key]}):
            kept[key] = data[key]
        else:
            refused.add(key)
    return frozenset(refused)


def config_yaml(job: str, config: CommonConfig) -> str:
    """``config`` as YAML you can save and edit: every key (defaults included), each under its
    description. Run it as is with ``--config FILE``: the same config fingerprint."""
    header = [
        f"# The {job} job's config: every key with its value, defaults included.",
        f"# Save it, edit it, run it: ray-pipelines {job} --config FILE",
    ]
    data = config.model_dump(mode="json")
    return "\n".join(header + _yaml_lines(type(config), data, "", _refused_when_set(config, data))) + "\n"


def json_schema(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(), indent=2)


# Packaged configs of a tool rather than of the job their name starts with
TOOL_CONFIGS = {"score-filter": "filter"}


def tool_of_config(spec: str | Path) -> str | None:
    """The tool whose packaged config ``spec`` names (``score-filter``: the filter tool's); None for a job's
    packaged config, a file of the user's, or a name that is neither (load_config says so)."""
    try:
        path = resolve_config_path(spec)
    except ConfigError:
        return None
    packaged = path.is_file() and path.resolve().parent == PACKAGED_CONFIGS.resolve()  # by name, path or link
    return TOOL_CONFIGS.get(path.stem) if packaged else None


def packaged_configs() -> list[tuple[str, str, str]]:
    """(name, job, first sentence of its opening comment) of each packaged example config."""
    out = []
    for name in packaged_config_names():
        text = (PACKAGED_CONFIGS / f"{name}.yaml").read_text()
        out.append((name, TOOL_CONFIGS.get(name, name.split("-")[0]), _first_sentence(text)))
    return out


def _first_sentence(text: str) -> str:
    """The first sentence of a YAML file's opening comment, over as many lines as it takes (a first line
    alone cut "Credentials come from the" short)."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("# Run:"):
            break
        comment.append(line.lstrip("# ").strip())
    words = " ".join(comment)
    # A full stop (not e.g.'s or i.e.'s) ends it, and so does a colon: the lead-in of what the config lists.
    end = re.search(r"(?<!e\.g)(?<!i\.e)\.(?:\s|$)|:\s", words)
    return words[: end.start()] + ("." if end.group().startswith(".") else "") if end else words


def packaged_configs_table(job: str | None = None) -> str:
    rows = [row for row in packaged_configs() if job is None or row[1] == job]
    width = max((len(name) for name, _, _ in rows), default=0)
    return "\n".join(f"  {name:<{width}}  {about}" for name, _, about in rows)
