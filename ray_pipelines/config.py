"""Job configuration: YAML files validated by pydantic.

Every job's config extends :class:`CommonConfig`. Unknown keys and bad
values fail before any work starts, with the offending key named. The
config fingerprint covers only the fields that change output bytes, so a
rerun with another ``limit``, pool size or input glob resumes the same
output instead of being refused.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .storage import (
    find_secrets,
    is_secret_name,
    misspelt_options_problem,
    ray_working_dir_copy,
    split_protocol,
    url_credentials,
    url_problem,
    without_query,
)

# What every job writes, the same for all: the file layout, column types and metadata, the
# decoding of windows. Bump it when those change: it is part of the config fingerprint, so an
# output written before is refused (naming ``output_format``) instead of mixed with new files.
# 2: tensors as nested fixed-size lists, dataset cards, windows cut from the whole file resampled.
OUTPUT_FORMAT = 2
# The Parquet codecs a job may write with (`compression`; jobs pick their own default).
Codec = Literal["none", "snappy", "zstd", "lz4", "gzip"]


def _peak_level(value: float) -> float:
    if not math.isfinite(value) or value > 0:  # 10 for "10 dB down" made every window an error row
        raise ValueError("a level in dBFS is 0 (full scale) or below, e.g. -60 for 60 dB down")
    return value


# A level in dBFS (a peak: ``silence_db``; an RMS: the score job's ``signal.silence_threshold_db``), and a
# length of audio in seconds (``min_duration``).
LevelDb = Annotated[float, AfterValidator(_peak_level)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# Audio the decoders read (libsndfile, MP2 too; FFmpeg through PyAV for AAC (.m4b: audiobooks), AC-3,
# Matroska/WebM audio (the .webm a video site's audio-only download is), WavPack, WMA, TTA and AMR).
AUDIO_EXTENSIONS = [
    *("wav", "wave", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "aifc", "au", "snd", "caf", "w64", "rf64"),
    *("m4a", "m4b", "aac", "ac3", "webm", "mka", "wv", "wma", "mp2", "tta", "amr"),
]
# Media FFmpeg reads that the defaults leave out, read only where ``extensions`` names them: video
# containers (their audio track), and audio formats no encoder here writes to test them (Monkey's Audio,
# Musepack, Speex, Shorten, TAK, DTS, E-AC-3, RealAudio) or decoded at many times audio's rate (DSD). A
# listing names the ones it leaves out.
OTHER_MEDIA_EXTENSIONS = (
    *("mp4", "m4v", "mov", "mkv", "avi", "3gp", "flv", "mpg", "mpeg"),
    *("ape", "mpc", "spx", "shn", "tak", "dts", "eac3", "ra", "dsf", "dff"),
)


def changed_fields(model: BaseModel, names: frozenset[str] | set[str] | None = None) -> set[str]:
    """The fields of ``model`` (of ``names`` only, if given) its input set to other than their defaults (a
    config dumped whole, as the actors are handed theirs, sets every field, most to their defaults)."""
    fields = type(model).model_fields
    return {
        name
        for name in model.model_fields_set
        if (names is None or name in names)
        and getattr(model, name) != fields[name].get_default(call_default_factory=True)
    }


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the problem."""


# A tokenizer's special tokens: settings named like secrets, never one
SPECIAL_TOKENS = frozenset(f"{kind}token" for kind in ("pad", "eos", "bos", "unk", "sep", "cls", "mask"))


def secret_paths(config: dict[str, Any]) -> list[str]:
    """:func:`~.storage.find_secrets` over a config, less what a model's settings name so without holding a
    secret: values that are no text (``use_auth_token: true``, ``token: false``), a bare ``key``, names
    "token" marks as a count or a tool (``max_tokens``, ``tokenizer``) and a tokenizer's special tokens
    (``pad_token: "<pad>"``)."""
    kept = []
    for path in find_secrets(config):
        value: Any = config
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value.get(part)
        name = path.rsplit(".", 1)[-1].lower().replace("_", "").replace("-", "")
        if not isinstance(value, str) or name == "key" or name in SPECIAL_TOKENS:
            continue
        if "token" in name and not name.endswith("token") and not is_secret_name(name.replace("token", "")):
            continue
        kept.append(path)
    return kept


def non_finite_paths(value: Any, path: str = "") -> list[str]:
    """Dotted paths of the infinite or NaN floats in a dumped config, at any depth."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path.rstrip(".")]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in non_finite_paths(item, f"{path}{key}.")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in non_finite_paths(item, f"{path}{i}.")]
    return []


class ActorPool(BaseModel):
    """An autoscaling actor pool: between ``min`` and ``max`` actors."""

    model_config = ConfigDict(extra="forbid")
    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ActorPool:
        if self.max < self.min:
            raise ValueError(f"actors.max ({self.max}) is smaller than actors.min ({self.min})")
        return self


class CommonConfig(BaseModel):
    """Keys every job understands."""

    # No float key of a job takes infinity or NaN: `duration: .inf` raised OverflowError out of the config's
    # own checks (a traceback, exit 1), `offset: .inf` or `mean: .nan` ran every row into an error.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    input: str | list[str] = Field(
        ...,
        description="Path, glob, fsspec URL (s3://bucket/prefix/**/*.flac), directory, "
        "a .txt/.lst file listing inputs, or .tar shards; or a list of those (keys are paths below each "
        "spec's folder: two files with one key are refused).",
    )
    output: str = Field(..., description="Output root: local path or fsspec URL.")
    seed: int = Field(0, description="Job seed; every random draw derives from it.")
    limit: int | None = Field(None, ge=1, description="Process at most N inputs (after sorting keys).")
    batch_size: int = Field(32, ge=1, description="Rows per batch handed to an actor.")
    actors: Annotated[int, Field(ge=1)] | ActorPool | None = Field(
        None, description="Actor pool size, or {min, max}. Default: one per CPU (CPU) or per GPU."
    )
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor. 0 = CPU. Unset: use GPUs when the cluster has them."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (endpoint_url, region). Never secrets."
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(AUDIO_EXTENSIONS),
        description="File extensions taken from directories, globs and tar shards (which inputs, like input).",
    )
    include_hidden: bool = Field(
        False,
        description="Also take dotfiles, files in dot folders and under __MACOSX/ from directories, globs and "
        "tar shards. Left out by default: macOS puts a ._ twin (metadata, not audio) beside every file it "
        "copies to another disk or tar, each an error row. A single file, a list file's lines and a glob "
        "that spells a hidden part (data/.takes/*.wav) are always read.",
    )
    keep_list: str | None = Field(None, description="File of keys: process only these.")
    ignore_list: str | None = Field(None, description="File of keys: skip these.")
    inputs_per_block: int = Field(8, ge=1, description="Inputs per decode block (a crash loses at most one block).")
    max_errored_blocks: int = Field(
        16,
        ge=0,
        description="Blocks whose worker crashed repeatedly that the job tolerates "
        "(their inputs become error rows) before it fails.",
    )
    rows_per_file: int = Field(2048, ge=1, description="Most rows in one Parquet shard file.")
    compression: Codec = Field(
        "lz4",
        description="Parquet codec. lz4: augment's log-mels shrink to about a third and teacher signals to about a "
        "half, the cheapest to decode in the one-row row groups the readers need (zstd: about 8 % smaller, more "
        "reader CPU; docs/benchmarks.md, The writer's codec with the page decoder).",
    )
    direct_io: bool = Field(
        True,
        description="Output on a local disk (ext4, xfs, btrfs, f2fs): write Parquet shards past the page "
        "cache (O_DIRECT), which saves copying every byte into fresh kernel pages (about 1 ms of CPU per 440 KB "
        "on a VM). false: through the page cache, whose write-back is asynchronous (a slow disk). Other "
        "filesystems (NFS, FUSE, tmpfs) and object stores always write the ordinary way.",
    )
    # Unattended runs (docs/operations.md): what a run does with inputs that changed or went away
    # since their rows were committed, and how it shares the output with other runs.
    on_change: Literal["reprocess", "keep"] = Field(
        "reprocess",
        description="An input whose etag (or size and mtime) differs from the one its rows were made from: "
        "reprocess (its old rows leave the output, new ones are written) or keep (old rows stay; reported).",
    )
    on_delete: Literal["keep", "prune"] = Field(
        "keep",
        description="An input no longer listed whose rows are in the output: keep them (reported) or prune "
        "(its rows and errors leave the output).",
    )
    allow_empty: bool = Field(False, description="Run even when an input spec matches nothing (else exit 1).")
    lost_retries: int = Field(
        1,
        ge=0,
        description="Times the inputs of blocks lost to a worker or node failure are run again within the run "
        "before it ends incomplete (exit 3).",
    )
    lease_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds without a heartbeat after which another run may take over this run's lease on "
        "the output (heartbeats every tenth of it).",
    )

    # Inputs a job makes itself rather than reads (the teacher job's ``synth://``).
    INPUT_SCHEMES: ClassVar[frozenset[str]] = frozenset()

    # Fields that change how a job runs but not the bytes it writes.
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "input",
            "extensions",
            "include_hidden",
            "output",
            "limit",
            "batch_size",
            "actors",
            "num_gpus",
            "storage_options",
            "keep_list",
            "ignore_list",
            "inputs_per_block",
            "max_errored_blocks",
            "rows_per_file",
            "compression",
            "direct_io",
            "on_change",
            "on_delete",
            "allow_empty",
            "lost_retries",
            "lease_timeout",
        }
    )

    @model_validator(mode="after")
    def _finite_everywhere(self) -> CommonConfig:
        """The sections' floats too (``signal.frame_seconds: .inf``, ``normalize.mean: .nan``): the top level's
        are refused by ``allow_inf_nan`` above, which the section models do not inherit."""
        found = non_finite_paths(self.model_dump())
        if found:
            raise ValueError(f"{', '.join(found)}: should be a finite number")
        return self

    @model_validator(mode="after")
    def _storage_options_spelt(self) -> CommonConfig:
        inputs = [self.input] if isinstance(self.input, str) else list(self.input or [])
        one_per_protocol = {split_protocol(url)[0]: url for url in [*inputs, self.output] if url}
        for url in one_per_protocol.values():  # (a list of many inputs: the options checked once per store)
            if problem := misspelt_options_problem(url, self.storage_options):
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _no_secrets_elsewhere(self) -> CommonConfig:
        """No key outside storage_options (checked on its own) holds a credential either: a model's path
        with ``user:password@``, a factory's ``hf_token`` or ``api_key`` were printed by --print-config and
        written into the output's _job.json and manifest.json."""
        checked = {"storage_options", "input", "output", "keep_list", "ignore_list"}  # by their own validators
        leaked = secret_paths(self.model_dump(mode="json", exclude=checked))
        if leaked:
            raise ValueError(
                f"{', '.join(leaked)}: a credential (a key named like one, or a URL with user:password@) would be "
                "written to the output's _job.json and manifest.json; give it to the model through the "
                "environment, or storage credentials through the environment (e.g. AWS_ACCESS_KEY_ID)"
            )
        return self

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        leaked = find_secrets(value)
        if leaked:
            raise ValueError(
                f"storage_options must not hold secrets ({', '.join(leaked)}); they would be written to the "
                "output's _job.json and manifest.json. Set them in the environment "
                "(e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return value

    @field_validator("input", "output", "keep_list", "ignore_list")
    @classmethod
    def _not_blank(cls, value: str | list[str] | None) -> str | list[str] | None:
        """An empty path would be the working directory: a job reading, or writing into, whatever folder
        it was started from (a ``--set input=`` whose value the shell left empty)."""
        if isinstance(value, list) and not value:
            raise ValueError("an empty list: give at least one path or URL")
        paths = [value] if isinstance(value, str) else value or []
        if any(not path.strip() for path in paths):
            raise ValueError("empty: give a path or URL" if isinstance(value, str) else "an empty path in the list")
        return value

    @field_validator("input", "output", "keep_list", "ignore_list")
    @classmethod
    def _no_credentials_in_urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        for url in [value] if isinstance(value, str) else value or []:
            if url_credentials(url):
                raise ValueError(
                    f"{url_credentials(url)} holds credentials (user:password@); set them in the environment"
                )
        return value

    @field_validator("input", "output", "keep_list", "ignore_list")
    @classmethod
    def _storage_here(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        """A URL no installed filesystem opens fails here, not after the output is claimed."""
        for url in [value] if isinstance(value, str) else value or []:
            if info.field_name == "input" and url.split("://", 1)[0] in cls.INPUT_SCHEMES:
                continue
            problem = url_problem(url, written=info.field_name == "output")
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("input", "output", "keep_list", "ignore_list")
    @classmethod
    def _expand_home(cls, value: str | list[str] | None) -> str | list[str] | None:
        """``~/clips`` in a config file (a shell expands it only on the command line) is the home folder's."""

        def expanded(path: str) -> str:
            return os.path.expanduser(path) if path.startswith("~") else path

        if isinstance(value, list):
            return [expanded(v) for v in value]
        return expanded(value) if isinstance(value, str) else value

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        return [v.lower().lstrip(".") for v in value]

    def fingerprinted(self) -> dict[str, Any]:
        """The output-relevant part of the config (runtime-only keys left out), and the output format."""
        return {**self.model_dump(mode="json", exclude=set(self.RUNTIME_FIELDS)), "output_format": OUTPUT_FORMAT}

    def recorded(self) -> dict[str, Any]:
        """The config as the output records it (``_job.json``, ``manifest.json``, the encode job's
        ``details.json``): http(s) inputs and key lists without their query (a presigned URL's signature is a
        credential while it lasts, and new with every signing)."""
        config = self.model_dump(mode="json")
        for name in ("input", "keep_list", "ignore_list"):
            value = config.get(name)
            if isinstance(value, str):
                config[name] = without_query(value)
            elif isinstance(value, list):
                config[name] = [without_query(v) for v in value]
        return config

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """SHA-256 of :meth:`fingerprinted` plus ``extra`` (e.g. model weight hashes)."""
        data = {**self.fingerprinted(), **({"_extra": extra} if extra else {})}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> nested dict, values parsed as YAML scalars (:func:`override_value`)."""
    out: dict[str, Any] = {}
    for dotted, raw in split_overrides(pairs):
        _set_dotted(out, dotted, override_value(raw))
    return out


def apply_overrides(data: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """``data`` with each ``--set key=value`` applied in turn: the key set to the value, a mapping
    included (``splits={train: 0.8, test: 0.2}`` replaces the splits: merged into the config's, its
    fractions summed to 1.1 with the config's ``validate``); a dotted key changes one entry."""
    out = copy.deepcopy(data)
    for dotted, raw in split_overrides(pairs):
        _set_dotted(out, dotted, override_value(raw))
    return out


def with_mapping_defaults(model: type[BaseModel], data: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """``data`` where a dotted ``--set`` goes into a mapping key the config leaves out: that key's default
    mapping first. ``--set splits.train=0.6 --set splits.test=0.3`` (the README's example) means the default
    splits with two entries changed; on a config without ``splits:`` it made a mapping of the two alone,
    summed to 0.9 and refused, where the same flags on a config that spells the default out worked."""
    out = dict(data)
    for dotted, _ in split_overrides(pairs):
        head, dot, _ = dotted.partition(".")
        field = model.model_fields.get(head)
        if dot and field is not None and out.get(head) is None:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, dict):
                out[head] = copy.deepcopy(default)
    return out


def split_overrides(pairs: list[str]) -> list[tuple[str, str]]:
    """``key=value`` pairs as ``(dotted key, the value's text)``."""
    split = []
    for pair in pairs:
        dotted, equals, raw = pair.partition("=")
        if not equals or not dotted:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        split.append((dotted, raw))
    return split


def override_value(raw: str) -> Any:
    """A ``--set`` value: YAML (``3``, ``[a, b]``, ``null``, ``{min: 1}``), except text YAML would cut or
    refuse, which is kept as typed: a ``#`` after a space (``/data/take #1`` was ``/data/take``), and what
    is not YAML (``*.flac``, ``@eaDir/x``, ``%20``: a traceback before)."""
    if raw == "":
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    cut_by_comment = isinstance(value, (str, type(None))) and re.search(r"(^|\s)#", raw)
    return raw if cut_by_comment else value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``a.b.c=value`` into ``data``; a number after a list is its entry (``teachers.0.path``)."""
    node: Any = data
    *parents, leaf = dotted.split(".")
    for at, part in enumerate(parents):
        if isinstance(node, list):
            node = node[_list_index(dotted, parents[at - 1], part, node)]
        else:
            if node.get(part) is None:  # absent, or null in the config: a mapping of the one key
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {part} is not a mapping")
    if isinstance(node, list):
        node[_list_index(dotted, parents[-1], leaf, node)] = value
    else:
        node[leaf] = value


def _list_index(dotted: str, name: str, part: str, items: list) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    if not items:
        raise ConfigError(f"--set {dotted}: {name} is an empty list: set it whole (--set '{name}=[...]')")
    raise ConfigError(
        f"--set {dotted}: {name} is a list of {len(items)}: give an entry's index (0 to {len(items) - 1})"
    )


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_config_names() -> list[str]:
    """Names of the example configs shipped in the package (``--config augment``)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config_path(spec: str | Path) -> Path:
    """A config file path, or the name of a packaged example config (``augment``, ``teacher-audio.yaml``).

    A file that exists wins; a bare name (no folder) is looked up among the packaged configs.
    """
    path = Path(spec)
    if path.is_file() or len(path.parts) > 1:
        return path
    packaged = PACKAGED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if packaged.is_file():
        return packaged
    raise ConfigError(
        f"no config file {spec!r}{_looked_in()} and no packaged config of that name (packaged configs: "
        f"{', '.join(packaged_config_names())})"
    )


def _looked_in() -> str:
    """Where a relative config path was looked for: the driver's folder, which in a submitted job is Ray's
    copy of the working directory (or the head's own folder without --working-dir), not the submitting shell's."""
    copy = ray_working_dir_copy(".")
    where = f" in {os.getcwd()}"
    return f"{where}, Ray's copy of the job's --working-dir" if copy else where


def load_config(
    model: type[CommonConfig],
    path: str | Path | None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> CommonConfig:
    """Read YAML (a file, or a packaged config by name), apply ``--set`` overrides, validate with ``model``."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        data = deep_merge(data, read_config_file(path))
    data = apply_overrides(with_mapping_defaults(model, data, overrides or []), overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e
    # A value YAML read as a number, a boolean or a mapping where the key wants text is the text typed:
    # `--set output=0123` (YAML 1.1 read 83), `output=yes` (True), `output=take: 2` (a mapping). Not a list:
    # `input=[2023, 2024]` taken whole as text was one glob pattern, "[2023, 2024]" (its error says to quote).
    typed = {
        dotted: raw
        for dotted, raw in split_overrides(overrides or [])
        if not isinstance(override_value(raw), (str, type(None), list))
    }
    wants_text = {_error_key(item["loc"]) for item in first.errors() if item["type"] == "string_type"}
    if not typed.keys() & wants_text:
        raise ConfigError(format_validation_error(first, model)) from None
    for dotted in typed.keys() & wants_text:
        _set_dotted(data, dotted, typed[dotted])
    return validate_config(model, data)


def read_config_file(spec: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, or in a packaged config named by ``spec``."""
    path = resolve_config_path(spec)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no config file {str(path)!r}{'' if path.is_absolute() else _looked_in()}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def validate_config(model: type[CommonConfig], data: dict[str, Any]) -> CommonConfig:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model)) from None


# Pydantic's error types for a value of the wrong type, and what each union member wanted, in words.
WRONG_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
}


def format_validation_error(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, keyed by the config key (``actors.max``), a union's tries told as one."""
    lines = ["invalid config:"]
    for item, key in _readable_errors(error.errors()):
        if item["type"] == "extra_forbidden":
            guess = did_you_mean(model, item["loc"]) if model is not None else None
            lines.append(f"  {key}: unknown key" + (f"; did you mean {guess}?" if guess else ""))
        elif item["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif item["type"] in ("union_tag_not_found", "union_tag_invalid"):
            lines.append(f"  {key}.{_union_tag_problem(item, model)}")
        else:
            value = _without_credentials(item.get("input"))
            shown = f" (got {value!r})" if not isinstance(value, dict) and value is not None else ""
            message = item["msg"].removeprefix("Value error, ")  # pydantic's prefix to a validator's own words
            lines.append(f"  {key}: {message}{shown}{_yaml_slip(item)}")
    return "\n".join(lines)


def _union_tag_problem(item: dict[str, Any], model: type[BaseModel] | None) -> str:
    """A discriminated union's tag (``kind``) missing or unknown, said with the tags it takes (pydantic's
    "Unable to extract tag using discriminator 'kind'" named neither the key nor its values)."""
    ctx = item.get("ctx") or {}
    tag_key = str(ctx.get("discriminator", "kind")).strip("'")
    if "expected_tags" in ctx:
        kinds = re.findall(r"'([^']*)'", ctx["expected_tags"])
    else:
        kinds = [k for m in (models_at(model, item["loc"]) if model is not None else []) for k in kinds_of(m)]
    one_of = f" (one of {', '.join(kinds)})" if kinds else ""
    if item["type"] == "union_tag_invalid":
        guess = difflib.get_close_matches(str(ctx.get("tag")), kinds, n=1, cutoff=0.6)
        return (
            f"{tag_key}: unknown {tag_key} {ctx.get('tag')!r}"
            + (f"; did you mean {guess[0]}?" if guess else "")
            + one_of
        )
    given = item.get("input")
    slip = (
        next((k for k in given if isinstance(k, str) and k.startswith(f"{tag_key}:")), None)
        if isinstance(given, dict)
        else None
    )
    if slip:  # `{kind:loudness}`: YAML reads one key "kind:loudness" without a space after the colon
        value = slip.split(":", 1)[1].strip()
        return f"{tag_key}: required key is missing{one_of}; YAML reads {slip!r} as one key: write '{tag_key}: {value}'"
    return f"{tag_key}: required key is missing{one_of}"


def _yaml_slip(item: dict[str, Any]) -> str:
    """A mapping written ``- kind:pesto`` (no space after the colon): YAML reads one string, which pydantic
    calls "not a valid dictionary"; the flow style's ``{kind:pesto}`` is told in :func:`_union_tag_problem`."""
    given = item.get("input")
    if item["type"] not in ("model_type", "model_attributes_type", "dict_type") or not isinstance(given, str):
        return ""
    slip = re.fullmatch(r"([A-Za-z_]\w*):(\S.*)", given.strip())
    if not slip or slip[2].startswith(("/", "\\")) or len(slip[1]) == 1:  # a URL, a drive letter: meant as written
        return ""
    return f"; YAML reads {given!r} as one string: write '{slip[1]}: {slip[2]}'"


def _without_credentials(value: Any) -> Any:
    """A value as an error may show it: a URL's ``user:password@`` with the password hidden."""
    if isinstance(value, str):
        return url_credentials(value) or value
    if isinstance(value, (list, tuple)):
        return type(value)(_without_credentials(v) for v in value)
    return value


def _is_union_tag(part: Any) -> bool:
    """A loc part naming the member of a union pydantic tried (``int``, ``list[str]``,
    ``function-after[_ordered(), ActorPool]``), not a key: config keys are lower-case identifiers."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "tuple", "none"})


def _error_key(loc: tuple[Any, ...]) -> str:
    """The config key an error's location names, union members' tags left out."""
    return ".".join(str(p) for p in loc if not _is_union_tag(p)) or "(root)"


def _readable_errors(errors: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each error with its key, union members' tags left out. Where a union was tried, the members that
    failed only on the value's type are dropped when another member got further (``actors: {min: 3,
    max: 1}`` is a pool whose max is too small, not "not an integer"), else told as one error:
    ``input: should be a string or a list (got 5)``."""
    by_union: dict[str, list[tuple[dict[str, Any], str]]] = {}
    plain: list[tuple[dict[str, Any], str]] = []
    for item in errors:
        loc = item["loc"]
        tag_at = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
        key = _error_key(loc)
        if tag_at is None:
            plain.append((item, key))
        else:
            by_union.setdefault(".".join(str(p) for p in loc[:tag_at]) or "(root)", []).append((item, key))
    readable = list(plain)
    for root, tried in by_union.items():
        further = [(item, key) for item, key in tried if item["type"] not in WRONG_TYPE]
        if further:
            readable += further
            continue
        wanted = list(dict.fromkeys(WRONG_TYPE[item["type"]] for item, _ in tried))
        merged = {**tried[0][0], "type": "union_type", "msg": "should be " + " or ".join(wanted)}
        readable.append((merged, root))
    return readable


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation can hold (through Optional, unions, lists, dicts)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def kinds_of(model: type[BaseModel]) -> tuple[str, ...]:
    """The tags a discriminated-union member answers to (its ``kind`` literal), e.g. ``("pesto",)``."""
    field = model.model_fields.get("kind")
    return tuple(str(a) for a in typing.get_args(field.annotation)) if field is not None else ()


def extra_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The models a section's keys of its own hold, where it takes keys of its own as typed values
    (``filter``: any score column's name, each a ``FilterRule``)."""
    if model.model_config.get("extra") != "allow":
        return []
    return models_in(typing.get_type_hints(model).get("__pydantic_extra__"))


def models_at(model: type[BaseModel], loc: typing.Sequence[Any]) -> list[type[BaseModel]]:
    """The models a value at ``loc`` may be: list indices and dict keys are skipped, a discriminated union's
    tag (``teachers.0.torchcrepe``) picks the member it names, and a section's own key leads to the model it
    holds (``filter.snr_db``: a ``FilterRule``)."""
    models = [model]
    for part in loc:
        fields = [m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields]
        if fields:
            models = [m for f in fields for m in models_in(f.annotation)]
        elif isinstance(part, str):
            models = (
                [m for m in models if part in kinds_of(m)] or [e for m in models for e in extra_models(m)] or models
            )
    return models


def did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The closest key to the unknown ``loc[-1]`` among the keys its section allows.

    Walks ``loc`` through the models' fields: list indices and dict keys are skipped, a
    discriminated union's tag (``teachers.0.torchcrepe.capcity``) picks the member it names, and a
    section's own key leads to the model it holds (``filter.snr_db.bound``: a ``FilterRule``)."""
    *parents, unknown = loc
    models = models_at(model, parents)
    keys = sorted({name for m in models for name in m.model_fields})
    synonym = SYNONYMS.get(str(unknown))
    if synonym in keys:  # another job's name for the same key
        return synonym
    for m in models:  # a section's own key given at the top (the filter tool's section as a score config)
        for name, section in m.model_fields.items():
            if typing.get_origin(section.annotation) in (list, tuple, set, dict):
                continue  # a list's or mapping's entries: `--set name.key` would not reach them
            if any(str(unknown) in inner.model_fields for inner in models_in(section.annotation)):
                return f"{name}.{unknown}"
    close = difflib.get_close_matches(str(unknown), keys, n=1, cutoff=0.6)
    return close[0] if close else None


# A key one job names another way (a factory's arguments: encode's model.factory_kwargs, the teacher's and
# the score job's kwargs), told as the guess before names merely close in spelling ("factory").
SYNONYMS = {"factory_kwargs": "kwargs", "kwargs": "factory_kwargs"}
