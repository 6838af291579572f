"""Reading YAML the way researchers write numbers.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``3e-4``, ``1E-3`` and
``1.0e3`` load as *strings*. `ConfigLoader` is PyYAML's safe loader with the YAML 1.2 float rule
instead, so every number a config can hold loads as a number:

============  ===========  ==========================================
written       loads as     note
============  ===========  ==========================================
``3e-4``      0.0003       exponent without a dot (YAML 1.2, Python)
``1E-3``      0.001        either case of ``e``
``1.0e3``     1000.0       exponent without a sign
``.5``        0.5
``5.``        5.0
``1_000``     1000 (int)   underscores separate digits (YAML 1.1, Python)
``1_000.5``   1000.5
``1e3``       1000.0       a float; an integer field takes it as 1000
``.inf``      inf          ``-.inf``, ``.nan`` as in YAML
``'3e-4'``    '3e-4'       quoted: always text
============  ===========  ==========================================

YAML 1.1's base-60 numbers (``1:30``, ``1:30.5``) stay text here. Syntax errors become
`YAMLSyntaxError` naming the file (or the ``--set`` item) and the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

FLOAT_RE = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 floats (see the module docstring)."""


INT_RE = re.compile(r"^[-+]?(?:0b[0-1_]+|0[0-7_]+|0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$")  # YAML 1.1 ints, no base 60

_NUMBERS = ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")
ConfigLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBERS]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_RE, list("-+0123456789."))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", INT_RE, list("-+0123456789"))


class YAMLSyntaxError(ValueError):
    """A YAML text could not be parsed; the message names where (file and line) and what."""


def load_yaml(text: str, where: str) -> Any:
    """Parse `text` with `ConfigLoader`; `where` names the source in errors (a path, '--set x')."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        detail = f"{context}; {problem}" if context else problem
        raise YAMLSyntaxError(f"{where}{at}: YAML syntax error: {detail}") from None


def load_yaml_file(path: str | Path) -> Any:
    path = Path(path)
    return load_yaml(path.read_text(), str(path))
