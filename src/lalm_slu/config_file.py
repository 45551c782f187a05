"""The workflow's config as the Snakefile reads it, for code outside Snakemake (tests, benchmarks): keys that
config.yaml leaves out take the schema's defaults. Plain Python (yaml, snakemake.utils)."""

from __future__ import annotations

from pathlib import Path

import yaml


def load_config(path) -> dict:
    """`path` (a config.yaml) over the demo model's recipe beside it, validated, the schema's defaults filled."""
    from snakemake.utils import update_config, validate

    root = Path(path).resolve().parent
    recipe = root / "workflow/configs/demo_model.yaml"
    config = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else {}
    update_config(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    validate(config, str(root / "workflow/schemas/config.schema.yaml"))
    return config
