"""docs/CONFIG.md's tables of defaults, generated from the packaged schema, the one source:

    python -m lalm_slu.config.docs --write     # from the checkout's root: rewrites the tables in docs/CONFIG.md
    python -m lalm_slu.config.docs --check     # exit status 1 when they are stale (tests/test_config_docs.py too)

One row per key with a default: the key's path (`<name>` for any key of a mapping, `[]` for any item of a list),
its default and the schema's description. A block the schema uses in several places (a $defs entry) gets a table
of its own, once."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from lalm_slu.config.settings import config_schema, resolved

BEGIN = "<!-- defaults: generated from the schema by `python -m lalm_slu.config.docs --write` -->"
END = "<!-- /defaults -->"
DOC = Path("docs/CONFIG.md")
MISSING = object()


def shared_blocks(schema: dict) -> set[str]:
    """The $defs entries referenced more than once."""
    counts: dict[str, int] = {}

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                name = node["$ref"].removeprefix("#/$defs/")
                counts[name] = counts.get(name, 0) + 1
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return {name for name, count in counts.items() if count > 1}


def object_branch(node: dict) -> dict:
    """The node, or the object among its oneOf/anyOf/allOf options (a block that may also be null)."""
    if "properties" in node or "additionalProperties" in node:
        return node
    for option in node.get("oneOf", []) + node.get("anyOf", []) + node.get("allOf", []):
        option = resolved(option)
        if "properties" in option:
            return option
    return node


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def shown(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False).strip()
    return f"`{text.removesuffix('...').strip()}`"


class Tables:
    """The rows of the main table and of each shared block's, in the schema's order."""

    def __init__(self, schema: dict):
        self.shared = shared_blocks(schema)
        self.blocks: dict[str, tuple[str, list]] = {}  # shared block -> (first path it is met at, rows)

    def walk(self, prop: dict, path: str, inherited, rows: list, block: str = "") -> None:
        """Rows for the key at `path` (schema `prop`; `inherited`: its enclosing block's default for it; `block`:
        where the shared block whose table holds the rows is met first) and the keys below it."""
        name = prop.get("$ref", "").removeprefix("#/$defs/")
        node = object_branch(resolved(prop))
        default = inherited if inherited is not MISSING else prop.get("default", MISSING)
        description = one_line(prop.get("description") or resolved(prop).get("description", ""))
        children = node.get("properties", {})
        if name in self.shared:
            if default is not MISSING:
                rows.append((path, shown(default), description or f"a `{name}` block (its keys: below)"))
            self.block(name, f"{block}.{path}".lstrip("."))
            return
        if default is not MISSING and not (children and isinstance(default, dict)):
            rows.append((path, shown(default), description))
        # A $defs block may keep its keys' defaults whole (lalm_slu.config.settings.whole_default).
        kept = config_schema()["$defs"].get(name, {}).get("default") if name else None
        below = {**(kept if isinstance(kept, dict) else {}), **(default if isinstance(default, dict) else {})}
        for key, child in children.items():
            self.walk(child, f"{path}.{key}".lstrip("."), below.get(key, MISSING), rows, block)
        if isinstance(node.get("additionalProperties"), dict):
            self.walk(node["additionalProperties"], f"{path}.<name>", MISSING, rows, block)
        if isinstance(node.get("items"), dict):
            self.walk(node["items"], f"{path}[]", MISSING, rows, block)

    def block(self, name: str, path: str) -> None:
        if name in self.blocks:
            return
        rows: list = []
        self.blocks[name] = (path, rows)
        definition = config_schema()["$defs"][name]
        node = object_branch(resolved(definition))
        below = definition.get("default") if isinstance(definition.get("default"), dict) else {}
        for key, child in node.get("properties", {}).items():
            self.walk(child, key, below.get(key, MISSING), rows, path)


def table(rows: list) -> list[str]:
    return ["| key | default | what it is |", "|---|---|---|"] + [f"| `{k}` | {v} | {d} |" for k, v, d in rows]


def render() -> str:
    """The generated part of docs/CONFIG.md, between its markers."""
    schema = config_schema()
    tables = Tables(schema)
    rows: list = []
    for key, prop in schema["properties"].items():
        tables.walk(prop, key, MISSING, rows)
    lines = table(rows)
    for name, (path, block_rows) in tables.blocks.items():
        if block_rows:
            description = one_line(config_schema()["$defs"][name].get("description", ""))
            lines += ["", f"#### `{name}` (e.g. `{path}`)", ""] + ([description, ""] if description else [])
            lines += table(block_rows)
    return "\n".join(lines)


def rewritten(text: str) -> str:
    """`text` (docs/CONFIG.md) with its generated part replaced by render()'s."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return f"{text[:start]}\n{render()}\n{text[end:]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lalm_slu.config.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC, help=f"the file to check or rewrite (default: {DOC})")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the generated tables")
    action.add_argument("--check", action="store_true", help="exit 1 when the generated tables are stale")
    args = parser.parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    if args.write:
        args.doc.write_text(rewritten(text), encoding="utf-8")
        return 0
    if rewritten(text) != text:
        print(f"{args.doc}: the defaults tables are stale; run python -m lalm_slu.config.docs --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
