"""The Terraform module under deploy/terraform, parsed with python-hcl2 for assertions.

No terraform binary runs here, so the tests read the configuration itself:
strings come back unquoted, expressions as ``${...}``, and ``jsonencode({...})``
documents (IAM policies, container definitions) as Python values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

from tests.helpers import ROOT

MODULE = ROOT / "deploy" / "terraform"
_JSONENCODE = re.compile(r"^\$\{jsonencode\((?P<body>.*)\)\}$", re.DOTALL)


def clean(value: Any) -> Any:
    """hcl2's output without its quoting and bookkeeping keys."""
    if isinstance(value, dict):
        return {
            clean(k): clean(v)
            for k, v in value.items()
            if k not in ("__is_block__", "__comments__")
        }
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def decode(expression: str) -> Any:
    """The value of a ``${jsonencode(...)}`` expression, references left as ``${...}``."""
    match = _JSONENCODE.match(expression)
    assert match, f"not a jsonencode(...) expression: {expression[:80]}"
    parsed = hcl2.loads(f"value = {match['body']}\n")
    return clean(parsed)["value"]


@dataclass
class Module:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.resources, f"{kind}.{name} is not in the module"
        return self.resources[(kind, name)]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    def resolve(self, value: Any) -> Any:
        """``value`` with ``${local.x}`` references replaced by the locals' values."""
        if not isinstance(value, str):
            return value
        whole = re.fullmatch(r"\$\{local\.(\w+)\}", value)
        if whole:
            return self.resolve(self.locals[whole[1]])
        return re.sub(r"\$\{local\.(\w+)\}", lambda m: str(self.resolve(self.locals[m[1]])), value)


def load(directory: Path = MODULE) -> Module:
    module = Module()
    for path in sorted(directory.glob("*.tf")):
        module.files[path.name] = path.read_text()
        with path.open() as f:
            parsed = clean(hcl2.load(f))
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    assert (kind, name) not in module.resources, f"{kind}.{name} twice"
                    module.resources[(kind, name)] = body
        for block in parsed.get("data", []):
            for kind, named in block.items():
                for name, body in named.items():
                    module.data[(kind, name)] = body
        for block in parsed.get("variable", []):
            module.variables.update(block)
        for block in parsed.get("output", []):
            module.outputs.update(block)
        for block in parsed.get("locals", []):
            module.locals.update(block)
        module.terraform += parsed.get("terraform", [])
    return module
