"""The workflow's config, layered once for the Snakefile and the package's commands alike: the demo model's recipe
(workflow/configs/demo_model.yaml), config.yaml over it, each --configfile in order, then --config's keys; checked
against the packaged schema, which fills in every key they leave out. Plain Python (yaml, jsonschema,
snakemake.utils)."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from lalm_slu.config.files import schema_path

# Read from the working directory, as Snakemake reads a `configfile:` directive's path.
BASE_CONFIG_FILES = ("workflow/configs/demo_model.yaml", "config.yaml")


def read_config_file(path) -> dict:
    """One config file's mapping of keys (YAML or JSON); a file that is neither, or not a mapping, is named."""
    from snakemake.exceptions import WorkflowError

    try:
        layer = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise WorkflowError(f"{path}: {error}") from None
    if not isinstance(layer, (dict, type(None))):
        raise WorkflowError(f"{path}: a config file is a mapping of keys, not a YAML {type(layer).__name__}")
    return layer or {}


def command_line_config(configfiles: Sequence = (), overrides: Mapping | None = None) -> dict:
    """--configfile's files merged in order, then --config's keys: what Snakemake lays over each config file."""
    from snakemake.utils import update_config

    merged: dict = {}
    for path in configfiles:
        update_config(merged, read_config_file(path))
    update_config(merged, dict(overrides or {}))
    return merged


def layered_config(command_line: Mapping, has_configfiles: bool, workdir=".") -> tuple[dict, list[str]]:
    """The validated config, and the base files read: each of BASE_CONFIG_FILES under `command_line` (what
    Snakemake's `configfile:` directive does, in its order). A missing base file is an error unless the command
    line gave config files (`has_configfiles`), as Snakemake has it."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import update_config

    config, read = copy.deepcopy(dict(command_line)), []
    for name in BASE_CONFIG_FILES:
        path = Path(workdir) / name
        if path.is_file():
            update_config(config, read_config_file(path))
            read.append(name)
        elif not has_configfiles:
            raise WorkflowError(f"config file {name} is not there ({path.absolute()}); give --configfile")
        update_config(config, copy.deepcopy(dict(command_line)))
    validate_config(config)
    return config, read


def load_config(configfiles: Sequence = (), overrides: Mapping | None = None, workdir=".") -> dict:
    """The config that `snakemake --configfile <configfiles> --config <overrides>` runs in `workdir` with."""
    return layered_config(command_line_config(configfiles, overrides), bool(configfiles), workdir)[0]


def validate_config(config: dict) -> None:
    """snakemake.utils.validate against the packaged schema (its defaults filled in), the error cut to the key
    and the reason: Snakemake's own message prints the whole schema after them."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_path()))
    except WorkflowError as error:
        cause = error.__context__  # snakemake.utils.validate raises while handling jsonschema's error
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        raise WorkflowError(schema_error_message(cause)) from None


def schema_error_message(error) -> str:
    """One line: the key path, then why (the most specific of an anyOf's reasons), then a likely spelling."""
    import jsonschema

    error = jsonschema.exceptions.best_match([error])
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    message = f"config {key.lstrip('.') or '(top level)'}: {error.message}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        for unknown in sorted(set(error.instance) - set(known)):
            close = difflib.get_close_matches(str(unknown), list(known), n=1)
            if close:
                message += f"; did you mean '{close[0]}' for '{unknown}'?"
    return message
