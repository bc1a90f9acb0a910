"""The core never imports a plugin: nothing under bench/ imports `attacks` or `defenses` (plugins register
themselves, commands included, and the registry loads them by name); the commands plugins bring are still
on `bench`. And bench/ stays in its wings (docs/architecture.md): its top level holds only the contract plugins
import and the entry points; everything else lives in `models/`, `data/`, `engine/` or `reporting/`."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = {"attacks", "defenses"}
# bench/'s top level: the contract plugins import and the entry points (`runner.py` re-exports the engine's names)
TOP_LEVEL = {"__init__.py", "registry.py", "config.py", "errors.py", "defense.py", "attack.py", "cli.py",
             "cli_shared.py", "runner.py"}
WINGS = {"models", "data", "engine", "reporting"}


def plugin_imports(path: Path) -> list[str]:
    """`line: statement` for every import of a plugin package in a file, at any depth (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{node.lineno}: {ast.unparse(node)}" for n in names if n.split(".")[0] in PLUGIN_PACKAGES]
    return found


def test_no_core_module_imports_a_plugin():
    files = sorted((ROOT / "bench").rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): hits for f in files if (hits := plugin_imports(f))}
    assert not bad, f"core modules import plugins (register a command or hook instead): {bad}"


def test_the_check_sees_nested_and_dotted_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom . import x\n\ndef g():\n    from defenses.musclelora.cost import cost_table\n"
                 "    import attacks.imported as i\n")
    assert [h.split(":")[0] for h in plugin_imports(f)] == ["5", "6"]


def test_help_lists_the_commands_plugins_bring():
    r = subprocess.run([sys.executable, "-m", "bench.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    for name in ("cost", "fourier", "musclelora-release"):
        assert f" {name} " in r.stdout, (name, r.stdout)


def test_bench_top_level_holds_only_the_contract_and_the_wings():
    bench = ROOT / "bench"
    files = {p.name for p in bench.iterdir() if p.is_file()}
    folders = {p.name for p in bench.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == TOP_LEVEL, (f"bench/'s top level: {sorted(files - TOP_LEVEL)} belong in a wing "
                                f"({', '.join(sorted(WINGS))}; docs/architecture.md); missing: {sorted(TOP_LEVEL - files)}")
    assert folders == WINGS, f"bench/ holds the wings {sorted(WINGS)} and no other folder: {sorted(folders)}"
    for wing in WINGS:
        assert (bench / wing / "__init__.py").is_file(), f"bench/{wing}/ is a package"
