"""Which source a command runs, as one hash: the workflow puts it in a rule's params (an edit re-runs the rule)
and the trainer puts it in its checkpoint fingerprint (an edit never resumes old state). Plain Python only: the
Snakefile imports this at planning time. Imports are followed statically (ast); nothing is imported."""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE_SRC = Path(__file__).resolve().parents[2]
# Modules that only watch a command's work (training logs, TensorBoard, dev-set scores), with what only they import:
# an edit to them, or to the decoder and scorer the dev evaluation borrows, must not retrain a grid of 7B runs or
# discard their checkpoints. A run's dev.csv and logs are what was observed when it ran.
OBSERVERS = frozenset({"lalm_slu.training.dev_evaluation", "lalm_slu.training.step_log"})


def module_file(module: str, src: Path = PACKAGE_SRC) -> Path | None:
    path = src.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_modules(module: str, file: Path) -> set[str]:
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from package import module` imports the module, not just a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "lalm_slu"}


def module_closure(module: str, src: Path = PACKAGE_SRC, skip: frozenset[str] = frozenset()) -> set[Path]:
    """Files of `module`, every package module it imports (transitively) and their packages; `skip`: modules
    neither hashed nor followed."""
    files, pending, seen = set(), [module], set()
    while pending:
        name = pending.pop()
        if name in seen or name in skip:
            continue
        seen.add(name)
        parts = name.split(".")
        pending.extend(".".join(parts[:depth]) for depth in range(1, len(parts)))
        file = module_file(name, src)
        if file is not None:
            files.add(file)
            pending.extend(imported_modules(name, file))
    return files


@lru_cache(maxsize=None)
def code_version(command_module: str, src: Path = PACKAGE_SRC) -> str:
    """sha256 of the source files the command `lalm_slu.commands.<command_module>` runs, observers left out."""
    digest = hashlib.sha256()
    for file in sorted(module_closure(f"lalm_slu.commands.{command_module}", src, OBSERVERS)):
        digest.update(str(file.relative_to(src)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
