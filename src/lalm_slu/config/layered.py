"""The workflow's config as the Snakefile reads it, for code outside Snakemake (tests, benchmarks): keys that
config.yaml leaves out take the schema's defaults. Plain Python (yaml, jsonschema, snakemake.utils)."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml


def load_config(path) -> dict:
    """`path` (a config.yaml) over the demo model's recipe beside it, validated, the schema's defaults filled."""
    from snakemake.utils import update_config

    root = Path(path).resolve().parent
    recipe = root / "workflow/configs/demo_model.yaml"
    config = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else {}
    update_config(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    validate_config(config, str(root / "workflow/schemas/config.schema.yaml"))
    return config


def validate_config(config: dict, schema: str) -> None:
    """snakemake.utils.validate (the schema's defaults filled in), its error cut to the key and the reason:
    Snakemake's own message prints the whole schema after them."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, schema)
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
