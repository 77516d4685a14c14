"""Files written atomically and read strictly.

Writes: a kill at any moment leaves the old file or the new one, and the new
one has the mode any other new file would have (0666 less the umask).

Reads: every YAML text goes through `load_yaml`, which refuses aliases that
expand past `MAX_YAML_NODES` nodes and duplicate keys; every JSON text
through `load_json`, which refuses duplicate keys. Both raise `InputError`
(a ValueError) whose message starts with the file (or other source) named.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mobilenetv3.messages import quote

__all__ = [
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "InputError",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_json",
    "load_yaml",
    "read_text",
    "read_yaml",
]

# A MobileNetV3-Large spec is about 330 YAML nodes and a full config about 150;
# an alias bomb of 2 KB expands to tens of millions. Past this the text is refused.
MAX_YAML_NODES = 100_000
# Specs and configs nest 4 levels deep; the limit stops a text like "[[[[..." of
# a few KB from exhausting the parser's recursion.
MAX_YAML_DEPTH = 64
_ERROR_TEXT = 200  # characters of a parser's own message kept in ours


class InputError(ValueError):
    """A YAML or JSON text (or its file) is unreadable, malformed or too large; the message names it."""


# ------------------------------------------------------------------ writing
def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (os.umask alone must set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # set and restored at once: the only portable way to read it
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable: POSIX keeps it in the directory's metadata, not the file's."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        descriptor = os.open(directory, flags)
    except OSError:  # e.g. Windows, where directories cannot be opened (nor need this)
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is done
        pass
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably.

    The bytes go to a temporary file of a unique name beside `path`, which is
    given mode 0666 less the umask (mkstemp creates 0600), fsynced, renamed over
    `path`, and the directory is fsynced so the rename survives a power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------ reading
def read_text(path: str | Path) -> str:
    """The UTF-8 text of `path`.

    Raises:
        FileNotFoundError: there is no such file (callers word their own hint).
        InputError: it is not a readable file or not UTF-8 text.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror or type(error).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start} is {data[error.start:error.start + 1]!r}); "
                         "is it a binary file?") from None


def _clip(text: str) -> str:
    return text if len(text) <= _ERROR_TEXT else text[: _ERROR_TEXT - 3] + "..."


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Refuse a node graph whose aliases expand past MAX_YAML_NODES, that nests past MAX_YAML_DEPTH, that
    refers to itself, or whose mappings repeat a key.

    An alias is the same node object as its anchor, so the expanded size is
    counted with one figure per distinct node: linear in the text, however
    far the aliases would expand.
    """
    sizes: dict[int, int] = {}  # id(node) -> its expanded node count
    # An iterative depth-first walk: (node, depth, children done?); no Python recursion to exhaust.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_NODES:
                raise InputError(f"{where}: its aliases expand to more than {MAX_YAML_NODES:,} YAML nodes; "
                                 "refused (write the values out, or use fewer aliases)")
            continue
        if key in sizes:
            continue  # an alias of a node already counted
        if key in open_nodes:
            raise InputError(f"{where}: a YAML alias refers to a node that contains it; refused")
        if depth > MAX_YAML_DEPTH:
            raise InputError(f"{where}: YAML nests deeper than {MAX_YAML_DEPTH} levels; refused")
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if (key_node.tag, key_node.value) in seen:
                        mark = key_node.start_mark
                        raise InputError(f"{where}: line {mark.line + 1}: key {quote(key_node.value)} is repeated "
                                         "in its mapping; give each key once")
                    seen.add((key_node.tag, key_node.value))
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML `text` with the safe loader, within bounds (module docstring).

    Args:
        text: the YAML text.
        where: its source (a file, "--set train.steps"), starting every message.

    Raises:
        InputError: the text is not valid YAML, or its aliases, nesting or repeated keys are refused.
    """
    if not isinstance(text, str):
        raise InputError(f"{where}: expected YAML text, got {type(text).__name__}")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    except InputError:
        raise
    except (yaml.YAMLError, ValueError) as error:  # ValueError: e.g. an integer past Python's 4300 digits
        raise InputError(f"{where}: not valid YAML ({_clip(str(error))})") from None
    except RecursionError:
        raise InputError(f"{where}: YAML nests too deeply; refused") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """`load_yaml` of the UTF-8 text of `path`.

    Raises:
        FileNotFoundError: there is no such file.
        InputError: see `read_text` and `load_yaml`; the message names `path`.
    """
    return load_yaml(read_text(path), str(path))


def load_json(text: str, where: str) -> Any:
    """Parse JSON `text`, refusing an object that repeats a key (json.loads keeps the last silently).

    Raises:
        InputError: the text is not valid JSON, nests too deeply, or repeats a key.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in pairs:
            if key in data:
                raise InputError(f"{where}: key {quote(key)} is repeated in a JSON object; give each key once")
            data[key] = value
        return data

    try:
        return json.loads(text, object_pairs_hook=unique)
    except InputError:
        raise
    except ValueError as error:  # JSONDecodeError, or an integer past Python's 4300 digits
        raise InputError(f"{where}: not valid JSON ({_clip(str(error))})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nests too deeply; refused") from None
