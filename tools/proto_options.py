"""Keep the per-language file options of every agentmesh proto declared and consistent.

Code generators for other languages read file options (`go_package`, `java_package`, ...)
to name what they write; without them a Go client needed `M...` flags. Each file gets the
usual set, derived from its package and file name, after its imports:

    option csharp_namespace = "Agentmesh.Orchestrator.V1";
    option go_package = "<GO_MODULE>/agentmesh/orchestrator/v1;orchestratorv1";
    option java_multiple_files = true;
    option java_outer_classname = "OrchestratorProto";
    option java_package = "com.agentmesh.orchestrator.v1";
    option objc_class_prefix = "AOX";
    option php_namespace = "Agentmesh\\Orchestrator\\V1";
    option ruby_package = "Agentmesh::Orchestrator::V1";

(GO_MODULE is defined below.) `python tools/proto_options.py` writes them; `--check` (part of
`make protos-check`) exits 1 naming each file whose options differ. A new proto file needs
nothing but this command.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GO_MODULE = "github.com/agentmesh/agentmesh/gen/go"
OPTION_NAMES = (
    "csharp_namespace",
    "go_package",
    "java_multiple_files",
    "java_outer_classname",
    "java_package",
    "objc_class_prefix",
    "php_namespace",
    "ruby_package",
)
_PACKAGE = re.compile(r"^package ([a-z0-9_.]+);$", re.M)
_IMPORT = re.compile(r'^import "[^"]+";$', re.M)
_OPTION = re.compile(r"^option (\w+) = .*;\n", re.M)


def _camel(word: str) -> str:
    return "".join(part.capitalize() for part in word.split("_"))


def options_for(path: Path, package: str) -> list[str]:
    """The option lines a file in `package` named `path` should declare."""
    parts = package.split(".")  # agentmesh, area, v1
    go_dir = "/".join(parts)
    go_name = "".join(parts[1:])
    prefix = "".join(p[0] for p in parts[:2]).upper() + "X"
    values = {
        "csharp_namespace": '"' + ".".join(_camel(p) for p in parts) + '"',
        "go_package": f'"{GO_MODULE}/{go_dir};{go_name}"',
        "java_multiple_files": "true",
        "java_outer_classname": f'"{_camel(path.stem)}Proto"',
        "java_package": '"com.' + package + '"',
        "objc_class_prefix": f'"{prefix}"',
        "php_namespace": '"' + "\\\\".join(_camel(p) for p in parts) + '"',
        "ruby_package": '"' + "::".join(_camel(p) for p in parts) + '"',
    }
    return [f"option {name} = {values[name]};" for name in OPTION_NAMES]


def rewritten(path: Path, text: str) -> str:
    """`text` with its managed options replaced by the expected block after `package`."""
    found = _PACKAGE.search(text)
    if found is None:
        raise SystemExit(f"{path}: no package line")
    kept = _OPTION.sub(lambda m: "" if m.group(1) in OPTION_NAMES else m.group(0), text)
    kept = re.sub(r"\n{3,}", "\n\n", kept)
    # After the imports (or the package line), where `buf format` keeps file options.
    anchor = list(_IMPORT.finditer(kept)) or [_PACKAGE.search(kept)]
    end = anchor[-1].end() if anchor[-1] is not None else 0
    head, tail = kept[:end], kept[end:].lstrip("\n")
    block = "\n".join(options_for(path, found.group(1)))
    return f"{head}\n\n{block}\n\n{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail instead of writing")
    args = parser.parse_args()
    stale = []
    for path in sorted((PROTO_ROOT / "agentmesh").rglob("*.proto")):
        text = path.read_text()
        expected = rewritten(path, text)
        if expected != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(expected)
    if stale and args.check:
        print("file options differ (run `python tools/proto_options.py`):", file=sys.stderr)
        for path in stale:
            print(f"  {path}", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote options of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
