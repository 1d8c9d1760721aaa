"""Reading and writing user files so that a malformed or hostile file is a clear error.

Every reader turns what a careless or hostile user can hand in (a binary or UTF-16 file, a
directory, a YAML alias bomb, 10,000 nested brackets, a 5,000-digit integer, a duplicated key)
into one :class:`InputError` that names the file, what was expected and what was found, before
anything large is allocated. Every writer is atomic (a temporary file in the same directory,
fsync, ``os.replace``), and :func:`check_writable` lets a command refuse a bad output path
*before* its long work instead of losing that work at the end.

Base install only (PyYAML, numpy, the standard library): the CLI's fast paths import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import reprlib
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

MAX_TEXT_BYTES = 64 << 20  # spaces, platforms, arch JSON: kilobytes; selections: megabytes
MAX_DEPTH = 64  # nesting of YAML/JSON containers; our files need fewer than 10
MAX_YAML_NODES = 200_000  # nodes after alias expansion (billion laughs: 10**9)
MAX_INT_DIGITS = 100  # Python refuses int() of > 4300 digits with a traceback
_VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")


class InputError(ValueError):
    """A user file or output path cannot be used; the message names it and says why."""


def brief(value: Any, limit: int = 80) -> str:
    """A bounded repr for error messages (never formats a whole huge value)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 8, 8, 3
    text = r.repr(value)
    return text if len(text) <= limit + 20 else text[: limit + 17] + "..."


# ---------------------------------------------------------------------------- reading
def read_bytes(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a user file, refusing directories, devices and files over ``max_bytes``."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file; expected {what}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read it ({exc.strerror or exc}); expected {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p} is a directory; expected {what}")
    if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
        raise InputError(
            f"{p} is {st.st_size:,} bytes, more than the {max_bytes:,} accepted for {what}"
        )
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise InputError(f"{p} is not a regular file (a device or socket?); expected {what}")
    try:
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"{p}: cannot read it ({exc.strerror or exc}); expected {what}") from None
    if len(data) > max_bytes:
        raise InputError(f"{p} holds more than the {max_bytes:,} bytes accepted for {what}")
    return data


def decode_text(data: bytes, source: str, what: str) -> str:
    """UTF-8 text of ``data`` (a UTF-8 BOM is dropped); anything else names the bad bytes."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for bom, name in ((b"\xff\xfe", "UTF-16 LE"), (b"\xfe\xff", "UTF-16 BE")):
        if data.startswith(bom):
            raise InputError(
                f"{source}: expected UTF-8 text ({what}), found bytes "
                f"{_hex(bom)} at offset 0 ({name}?); re-save the file as UTF-8"
            )
    nul = data.find(b"\x00")
    if nul >= 0:
        guess = "UTF-16?" if nul <= 1 else "a binary file?"
        raise InputError(
            f"{source}: expected UTF-8 text ({what}), found a NUL byte at offset {nul} ({guess})"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : min(exc.end + 1, exc.start + 4)]
        raise InputError(
            f"{source}: expected UTF-8 text ({what}), found bytes {_hex(bad)} at offset "
            f"{exc.start} (Latin-1 or another encoding?); re-save the file as UTF-8"
        ) from None


def read_text(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A user text file as UTF-8, with every way it can fail turned into an InputError."""
    return decode_text(read_bytes(path, what, max_bytes), str(Path(path).expanduser()), what)


def _hex(data: bytes) -> str:
    return " ".join(f"0x{b:02x}" for b in data)


# ---------------------------------------------------------------------------- YAML
class SafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting, alias bombs and huge integers."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_YAML_NODES

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise _Refused(
                    f"nested more than {self.max_depth} levels deep (line {mark.line + 1})"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node, self.max_nodes, self.max_depth)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise _Refused(
                        f"duplicate key {brief(key)} on lines {first} and {line} (a YAML "
                        "mapping takes each key once; the second would silently win)"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        digits = sum(ch.isalnum() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise _Refused(
                f"an integer of {digits} digits on line {node.start_mark.line + 1} (at most "
                f"{MAX_INT_DIGITS} are accepted)"
            )
        return super().construct_yaml_int(node)


SafeLoader.add_constructor("tag:yaml.org,2002:int", SafeLoader.construct_yaml_int)


class _Refused(Exception):
    """Raised inside the loader; load_yaml adds the source."""


def _check_expansion(root: Any, max_nodes: int, max_depth: int) -> None:
    """Count nodes and depth as if every alias were expanded, without expanding anything."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    visiting: set[int] = set()
    # iterative post-order over the DAG (aliases share node objects)
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size and not done:
            continue
        kids: list[Any] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if not done:
            if any(id(k) in visiting for k in kids):
                raise _Refused("an alias refers to its own anchor (a recursive structure)")
            visiting.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
            continue
        visiting.discard(key)
        size[key] = 1 + sum(size.get(id(k), 1) for k in kids)
        depth[key] = 1 + max((depth.get(id(k), 1) for k in kids), default=0)
        if size[key] > max_nodes:
            raise _Refused(
                f"its aliases expand to more than {max_nodes:,} values (a YAML alias bomb?)"
            )
        if depth[key] > max_depth:
            raise _Refused(f"its aliases nest more than {max_depth} levels deep")


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; every refusal or syntax error is an InputError naming ``source``."""
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclass
    except _Refused as exc:
        raise InputError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: malformed YAML: {_one_paragraph(str(exc))}") from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply to read") from None


def _one_paragraph(text: str) -> str:
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= 400 else text[:397] + "..."


# ---------------------------------------------------------------------------- JSON
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON text (strings skipped), without parsing it."""
    import numpy as np

    if "[" not in text and "{" not in text:
        return 0
    bare = _JSON_STRING.sub('""', text).encode("utf-8", "replace")
    b = np.frombuffer(bare, dtype=np.uint8)
    step = ((b == ord("[")) | (b == ord("{"))).astype(np.int64)
    step -= ((b == ord("]")) | (b == ord("}"))).astype(np.int64)
    return int(np.cumsum(step).max(initial=0))


def _parse_int(source: str) -> Any:
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise _Refused(
                f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS} are "
                "accepted)"
            )
        return int(text)

    return parse


def load_json(text: str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON with the YAML reader's depth and integer-size limits."""
    depth = json_depth(text)
    if depth > max_depth:
        raise InputError(f"{source}: JSON nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text, parse_int=_parse_int(source))
    except _Refused as exc:
        raise InputError(f"{source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not valid JSON: {exc}") from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"{source}: not valid JSON: {brief(str(exc), 200)}") from None


# ---------------------------------------------------------------------------- writing
def check_writable(path: str | Path, what: str) -> Path:
    """Refuse an output path that cannot be written, before the work that produces it.

    The path must not be a directory, a read-only file or on a virtual filesystem (/proc,
    /sys, /dev); its nearest existing ancestor must be a writable directory (the missing
    ones are created when the file is written).
    """
    p = Path(path).expanduser()
    full = Path(os.path.abspath(p))
    for root in _VIRTUAL_ROOTS:
        if full == Path(root) or Path(root) in full.parents:
            raise InputError(
                f"{p}: cannot write {what} under {root} (a virtual filesystem); choose a "
                "path on disk"
            )
    if p.is_dir():
        raise InputError(f"{p} is a directory; expected a file path for {what}")
    if p.exists() or p.is_symlink():
        try:
            st = p.stat()
        except OSError as exc:
            raise InputError(f"{p}: cannot write {what} ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p} is not a regular file; expected a file path for {what}")
        if not st.st_mode & 0o222 or not os.access(p, os.W_OK):
            raise InputError(f"{p} is read-only; cannot write {what} there")
    _check_parent(full.parent, p, what)
    return p


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Like :func:`check_writable` for an output *directory* (created if missing)."""
    p = Path(path).expanduser()
    full = Path(os.path.abspath(p))
    for root in _VIRTUAL_ROOTS:
        if full == Path(root) or Path(root) in full.parents:
            raise InputError(f"{p}: cannot write {what} under {root} (a virtual filesystem)")
    if p.exists() and not p.is_dir():
        raise InputError(f"{p} exists and is not a directory; expected a directory for {what}")
    _check_parent(full if p.is_dir() else full.parent, p, what)
    return p


def _check_parent(parent: Path, p: Path, what: str) -> None:
    anc = parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(f"{p}: {anc} is a file, not a directory; cannot write {what} there")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{p}: the directory {anc} is not writable; cannot write {what} there")
    try:  # the real test: read-only mounts pass os.access for root
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".inag-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"{p}: cannot create files in {anc} ({exc.strerror or exc}); cannot write {what}"
        ) from None


@contextlib.contextmanager
def atomic_open(
    path: str | Path, binary: bool = False, mode: int | None = None
) -> Iterator[IO[Any]]:
    """A handle on a temporary file beside ``path`` that replaces it only on success.

    The file keeps the permissions of the one it replaces (new files: 0666 minus the umask),
    or gets ``mode`` if given (0o600: owner-only from the first byte on).
    """
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{p}: cannot write it ({exc.strerror or exc})") from None
    try:
        if mode is None:
            try:
                mode = stat.S_IMODE(p.stat().st_mode)
            except OSError:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else _TEXT)) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"{p}: cannot write it ({exc.strerror or exc})") from None
        raise


_TEXT: dict[str, Any] = {"encoding": "utf-8", "newline": ""}


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one."""
    with atomic_open(path, binary=True, mode=mode) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
