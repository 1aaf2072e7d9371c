"""Reading YAML with the line of every problem: :func:`load_yaml`, :func:`yaml_line` and :func:`locate_error`.

Syntax errors are ``<file>:<line>:<col>: not valid YAML ...; fix: ...``, and a check's error message is mapped back to
the line of the entry it names.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from .._util import KnowacqError
from .readers_files import _one_line, file_error

__all__ = ['load_yaml', 'yaml_line', 'locate_error']


# -- YAML ----------------------------------------------------------------------------------------------------------

_YAML_HINTS = [
    ("'\\t'", 'indent with spaces: YAML does not allow tabs'),
    ('mapping values are not allowed', "quote the value if it holds ': ', or fix the indentation of this line"),
    ("could not find expected ':'", "add ': ' after the key, or quote the text"),
    ('did not find expected key', 'line this entry up with the keys above it (check the indentation)'),
    ('expected <block end>', 'line this entry up with the keys above it (check the indentation)'),
    ("expected ',' or", 'close the bracket that is left open, or put a comma between items'),
    ('did not find expected', 'close the bracket or quote that is left open, or put a comma between items'),
    ('unexpected end of stream', 'close the quote or bracket that is left open'),
    ('undefined alias', 'define the &anchor before using *alias, or quote the text starting with *'),
    ('unhashable', 'keys must be plain names: quote the key'),
    ('expected a single document', "keep one document: remove the '---' separator"),
    ('cannot start any token', 'quote the value (characters such as @ ` % cannot start a plain value)'),
]


def _yaml_fix(problem: str) -> str:
    for needle, fix in _YAML_HINTS:
        if needle in problem:
            return f'fix: {fix}'
    return "fix the YAML syntax there (indent with spaces, ': ' after each key, matching quotes and brackets)"


def _syntax_error(path, line: int, col: int, problem: str) -> KnowacqError:
    problem = problem or 'syntax error'
    return file_error(path, line, f'not valid YAML at line {line}, column {col}: {problem}', _yaml_fix(problem), col=col)


def load_yaml(path, what: str = 'file') -> Tuple[Any, Any]:
    """``(data, root node)`` of a YAML file (``yaml.safe_load`` semantics); the node gives the lines of keys.

    Syntax errors are ``<file>:<line>:<col>: not valid YAML ...; fix: ...``; a key given twice in one mapping is an
    error too (YAML would silently keep the last)."""
    import yaml
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KnowacqError(_one_line(f'{what} {path} cannot be read ({e}); check the path')) from None
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        raise file_error(path, line, f'is not UTF-8 text (byte {data[e.start:e.start + 1]!r})', 'save the file as UTF-8') from None
    loader = None
    try:
        try:
            loader = yaml.SafeLoader(text)  # checks that every character is printable
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            if e.context_mark is not None and any(s in str(e.problem) for s in ('end of stream', 'stream end', "expected ':'")):
                mark = e.context_mark  # an unclosed quote or bracket, a key without ':': where it started
            problem = str(e.problem or e.context or '')
            if e.context and e.problem:
                problem = f'{e.problem} ({e.context}'
                problem += f' started at line {e.context_mark.line + 1})' if e.context_mark else ')'
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise _syntax_error(path, line, col, problem) from None
        except yaml.reader.ReaderError as e:
            line = text.count('\n', 0, e.position) + 1
            col = e.position - (text.rfind('\n', 0, e.position) + 1) + 1
            raise _syntax_error(path, line, col, f'the character {e.character!r} is not allowed ({e.reason})') from None
        except yaml.YAMLError as e:
            raise _syntax_error(path, 1, 1, str(e)) from None
        except RecursionError:
            raise _syntax_error(path, 1, 1, 'the structure nests too deeply') from None
        if node is None:
            return None, None
        _check_duplicate_keys(path, node)
        try:
            value = loader.construct_document(node)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            raise _syntax_error(path, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, str(e.problem or e)) from None
        except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. a date such as 2024-13-45
            bad = _bad_scalar(loader, node)
            line, col = (bad.start_mark.line + 1, bad.start_mark.column + 1) if bad is not None else (1, 1)
            value_text = f' {bad.value!r}' if bad is not None else ''
            raise file_error(path, line, f'the value{value_text} cannot be read ({type(e).__name__}: {e})',
                             'quote it to keep it as text', col=col) from None
        return value, node
    finally:
        if loader is not None:
            loader.dispose()


def _walk(node, seen=None):
    """Every node under ``node`` once (aliases can make the graph cyclic)."""
    seen = set() if seen is None else seen
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if isinstance(n.value, list):
            for item in reversed(n.value):
                if isinstance(item, tuple):
                    stack.extend(reversed(item))
                else:
                    stack.append(item)


def _check_duplicate_keys(path, root) -> None:
    import yaml
    for node in _walk(root):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == 'tag:yaml.org,2002:merge':
                    continue
                ident = (key.tag, key.value)
                if ident in first:
                    raise file_error(path, key.start_mark.line + 1, f'the key {key.value!r} is given twice in one mapping '
                                     f'(first at line {first[ident]})', 'merge the two entries into one', col=key.start_mark.column + 1)
                first[ident] = key.start_mark.line + 1


def _bad_scalar(loader, root):
    import yaml
    for node in _walk(root):
        if isinstance(node, yaml.ScalarNode):
            try:
                loader.construct_object(node, deep=True)
            except Exception:  # noqa: BLE001 - the one that fails is the one to name
                return node
    return None


def _child(node, key):
    """The value node of ``key`` in a mapping node (or item ``key`` of a sequence node); ``None`` if absent."""
    import yaml
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return v
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def yaml_line(node, *keys) -> int:
    """The 1-based line of the entry at ``keys`` under ``node`` (the key's line for a mapping entry), as deep as it
    exists; 1 without a node."""
    import yaml
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        else:
            child = _child(node, key)
            if child is None:
                break
            line, node = child.start_mark.line + 1, child
    return line


_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def _tokens(message: str) -> List[str]:
    out = []
    for m in _QUOTED.finditer(message):
        raw = m.group(0)
        try:
            import ast
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw[1:-1]
        if isinstance(value, str) and value:
            out.append(value)
    return out


def locate_error(message: str, node, scopes: Sequence[Tuple[str, Any]] = ()) -> int:
    """The line a check's error ``message`` is about, found in the YAML node tree: the entry named in the message.

    ``scopes`` are ``(regex, path)`` pairs: when ``regex`` matches the message, the search is narrowed to the entry
    at ``path`` (a tuple, or a function of the match giving one), e.g. ``(r"fold (\\d+)", lambda m: ('folds',
    int(m[1]) - 1))``. Within it, the first quoted name that is a key or value there gives the line (a name found
    once wins over one found several times); else the first top-level key named as a word; else the scope's line."""
    import yaml
    if node is None:
        return 1
    scope, found = node, []
    for pattern, path in scopes:
        m = re.search(pattern, message)
        if m:
            for k in (path(m) if callable(path) else path):
                child = _child(scope, k)
                if child is None:
                    break
                scope = child
                found.append(k)
            break
    scope_line = yaml_line(node, *found)
    entries = []   # (kind, text, line): kind 0 = key, 1 = scalar value
    for n in _walk(scope):
        if isinstance(n, yaml.MappingNode):
            for k, _ in n.value:
                if isinstance(k, yaml.ScalarNode):
                    entries.append((0, k.value, k.start_mark.line + 1))
        elif isinstance(n, yaml.ScalarNode):
            entries.append((1, n.value, n.start_mark.line + 1))
    first_any = None
    for token in _tokens(message):
        hits = sorted({(kind, line) for kind, text, line in entries if text == token})
        if not hits and len(token) > 1:
            hits = sorted({(2, line) for kind, text, line in entries if kind == 1 and token in text})
        lines = sorted({line for _, line in hits})
        if len(lines) == 1:
            return lines[0]
        if lines and first_any is None:
            first_any = hits[0][1]
    if first_any is not None:
        return first_any
    if isinstance(scope, yaml.MappingNode):
        keys = {k.value: k.start_mark.line + 1 for k, _ in scope.value if isinstance(k, yaml.ScalarNode)}
        for word in re.findall(r'[A-Za-z_][\w-]*', message):
            if word in keys:
                return keys[word]
    return scope_line
