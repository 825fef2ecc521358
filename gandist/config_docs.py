"""The config's own documentation: the docstring under each field of gandist/config.py, shown to users.

    keys(cfg)            every key with its type, value, default and meaning
    listing(cfg, name)   that as text, for one section or key (`gandist config [SECTION|KEY]`)
    commented_yaml(cfg)  the resolved config as YAML with each docstring as a comment (`--print-config`)

Python keeps no docstrings of attributes, so they are read from the source of each config class.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from gandist.config import Config, ConfigError, describe_type

WIDTH = 100  # of comment lines and descriptions


@dataclass(frozen=True)
class KeyDoc:
    """One config key: dotted name, type in words, value, default, and the docstring of its field."""

    key: str
    type: str
    value: Any
    default: Any
    doc: str


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass, as one paragraph per field."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    docs = {}
    for field, after in zip(node.body, node.body[1:]):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def section_doc(section: Any) -> str:
    """The one-paragraph docstring of a section's class."""
    return " ".join(inspect.cleandoc(type(section).__doc__ or "").split())


def keys(cfg: Config | None = None) -> list[KeyDoc]:
    """Every key of the config, in the order of --print-config; `value` from `cfg` (default: the defaults)."""
    cfg = cfg or Config()
    out: list[KeyDoc] = []

    def walk(obj: Any, default: Any, prefix: str) -> None:
        hints, docs = typing.get_type_hints(type(obj)), field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, getattr(default, f.name), f"{prefix}{f.name}.")
                continue
            kind = describe_type(hints[f.name])
            out.append(KeyDoc(prefix + f.name, kind, value, getattr(default, f.name), docs.get(f.name, "")))

    walk(cfg, Config(), "")
    return out


def _sections(cfg: Config) -> dict[str, Any]:
    """Section name -> section, in order."""
    return {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))
    }


def _flow(value: Any) -> str:
    """A value as one line of YAML (flow style), the way a user would write it."""
    value = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("\n...")].strip() if text.endswith("\n...") else text


def listing(cfg: Config | None = None, name: str = "") -> str:
    """Keys with type, value (and default, where the value differs) and meaning: all, one section, or one key."""
    cfg = cfg or Config()
    sections = _sections(cfg)
    chosen = [k for k in keys(cfg) if not name or k.key == name or k.key.startswith(name + ".")]
    if not chosen:
        known = [*sections, *(k.key for k in keys(cfg))]
        close = [k for k in known if k.split(".")[-1] == name.split(".")[-1]] or difflib.get_close_matches(name, known)
        hint = f"did you mean {close[0]!r}?" if close else f"sections: {', '.join(sections)}"
        raise ConfigError(f"no config key or section {name!r} ({hint}); `gandist config` lists them all")
    lines: list[str] = []
    shown_section = None
    for k in chosen:
        section = k.key.split(".")[0] if "." in k.key else ""
        if section != shown_section:
            shown_section = section
            title, doc = (section, section_doc(sections[section])) if section else ("top level", section_doc(cfg))
            lines += ["", f"{title}: {doc}"]
        value = _flow(k.value)
        changed = f" (default {_flow(k.default)})" if k.value != k.default else ""
        lines.append(f"  {k.key}: {k.type} = {value}{changed}")
        lines += textwrap.wrap(k.doc, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines).lstrip("\n") + "\n"


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ") if text else []


def commented_yaml(cfg: Config) -> str:
    """The config as YAML that loads back to the same values, each key under a comment holding its docstring."""
    lines = _comment(section_doc(cfg), "") + ["# `gandist config [SECTION|KEY]` lists the keys with their types", ""]
    current = None
    for k in keys(cfg):
        section, _, leaf = k.key.rpartition(".")
        indent = "  " if section else ""
        if section and section != current:
            current = section
            lines += [""] + _comment(section_doc(getattr(cfg, section)), "") + [f"{section}:"]
        lines += _comment(f"{k.doc} ({k.type})", indent) + [f"{indent}{leaf}: {_flow(k.value)}"]
    return "\n".join(lines) + "\n"
