"""The one YAML reader of dtlab: safe tags only, bounded alias expansion, bounded depth.

``yaml.safe_load`` is safe against code execution but not against size: a 512-byte document
of nested aliases ("billion laughs") expands to hundreds of MB as soon as anything walks it
(an error message quoting it, ``json.dumps``, a notebook parameter cell). Here a document is
first *composed* (the node graph, where an alias is a shared node), its expanded size is
counted without expanding it (memoised per node, linear in the graph) and its depth checked
without recursion; only then is it constructed. Too big, too deep or malformed raises
:class:`SpecError` naming the file and the limit. :func:`read_text` is the matching file check
(missing, a directory, unreadable, too large, not UTF-8: each its own message).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import SpecError
from .pathcheck import input_file
from .strict_json import MAX_DEPTH, MAX_INT_DIGITS  # the same nesting and integer limits as JSON input

MAX_NODES = 1_000_000      # scalars + collections after alias expansion, per document
MAX_FILE_BYTES = 64 << 20  # a spec or params file; traces are read by their own readers


def read_text(path: str | Path, max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> str:
    """The text of a spec/params file, or a SpecError naming the path and what is wrong with it."""
    path = input_file(path, what)
    where = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SpecError(where, f"{what} is {size:,} bytes; at most {max_bytes:,} are read")
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise SpecError(where, f"{what} is not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise SpecError(where, f"{what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(where, f"cannot read {what}: {exc.strerror or exc}") from None


def _yaml_error(where: str, exc: yaml.YAMLError) -> SpecError:
    mark = getattr(exc, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return SpecError(where, f"not valid YAML{at}: {str(problem)[:200]}")


def check_node(node: yaml.Node, where: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """Expanded size of a composed document (aliases counted each time they are used), or SpecError."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(node, 1, False)]
    on_path: set[int] = set()
    while stack:
        n, depth, done = stack.pop()
        key = id(n)
        if done:
            on_path.discard(key)
            total = 1
            for child in _children(n):
                total += sizes[id(child)]
            if total > max_nodes:
                raise SpecError(where, f"document expands to more than {max_nodes:,} YAML nodes "
                                       "(nested aliases?); refusing to load it")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if depth > max_depth:
            raise SpecError(where, f"YAML nested deeper than {max_depth} levels")
        if key in on_path:  # a recursive alias: safe_load builds a cyclic object nobody can walk
            raise SpecError(where, "recursive YAML alias")
        on_path.add(key)
        stack.append((n, depth, True))
        for child in _children(n):
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))
    return sizes[id(node)]


def _children(n: yaml.Node) -> list[yaml.Node]:
    if isinstance(n, yaml.SequenceNode):
        return list(n.value)
    if isinstance(n, yaml.MappingNode):
        return [x for pair in n.value for x in pair]
    return []


class _Loader(yaml.SafeLoader):
    """SafeLoader whose integers are bounded like strict JSON's (a 5,000-digit int is an error)."""

    def construct_yaml_int(self, node):
        digits = sum(ch.isdigit() for ch in node.value)
        if digits > MAX_INT_DIGITS:
            raise SpecError("", f"integer with {digits} digits is too large (at most {MAX_INT_DIGITS}), "
                                f"line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_all(text: str, where: str = "input", max_nodes: int = MAX_NODES) -> Iterator[Any]:
    """Every document of ``text`` (like ``yaml.safe_load_all``), each checked before it is built."""
    loader = _Loader(text)  # pure-Python composer: deep input is a RecursionError, not a crash
    try:
        while loader.check_node():
            node = loader.get_node()
            check_node(node, where, max_nodes)
            yield loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(where, exc) from None
    except RecursionError:
        raise SpecError(where, f"YAML nested deeper than {MAX_DEPTH} levels") from None
    except SpecError as exc:
        raise SpecError(where, exc.rule) if not exc.field else exc from None
    except (ValueError, OverflowError) as exc:  # e.g. an impossible date in a timestamp scalar
        raise SpecError(where, f"invalid YAML value: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


def load(text: str, where: str = "input", max_nodes: int = MAX_NODES) -> Any:
    """The single document of ``text`` (None when empty), checked like :func:`load_all`."""
    docs = list(load_all(text, where, max_nodes))
    if len(docs) > 1:
        raise SpecError(where, f"expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None
