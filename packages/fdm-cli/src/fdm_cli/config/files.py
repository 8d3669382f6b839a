"""Reading config files (YAML or JSON) with bounded memory, whoever wrote them.

A config file may come from anywhere: the user's own, or the ``config.yaml`` of a run folder
someone shared. A few kilobytes of YAML can still describe gigabytes (an "alias bomb": each
line repeats the one before ten times through ``*anchor`` references, which json/deep copies
then expand), so every config is read here, under three limits, each refused with one line
naming the file:

- at most MAX_CONFIG_BYTES bytes (the rest is never read: a device or a huge file is harmless);
- at most MAX_ALIASES ``*alias`` references (real configs use a handful, if any);
- at most MAX_NODES values once every alias is expanded, and no alias that contains itself.

Nesting deeper than Python's recursion allows is refused the same way.

A run folder is not trusted to choose what runs: the data source of its saved config is not used
when it is a ``pipe:`` command or a URL (`saved_run_config`), unless the user gives it again on
the command line or in a config file they name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fdm_cli.artifacts import checkpoints as ckpt
from fdm_cli.errors import UserError

MAX_CONFIG_BYTES = 1 << 20  # a TrainConfig is ~3 kB of YAML
MAX_ALIASES = 100
MAX_NODES = 100_000  # values (mappings, lists, scalars) once aliases are expanded
logger = logging.getLogger(__name__)
WITHHELD = "\0withheld-from:"  # + the config file: a run folder's command or URL data source


class ConfigLimitError(UserError):
    """A config file over one of the limits of this module (a size, alias or nesting bomb)."""


class _Refused(yaml.YAMLError):
    """Raised inside the loader; `load_config` turns it into a ConfigLimitError."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data only) that counts aliases and refuses a document whose
    expanded size is over MAX_NODES before any Python object is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} YAML aliases (*name)")
        return super().compose_node(parent, index)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return self.construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph that expands to more than MAX_NODES nodes or holds a cycle.

    Counted without expanding: each distinct node once (memoised), iteratively."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values once its YAML aliases are expanded")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused("a YAML alias that contains itself")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _limit_error(path: Path, why: str) -> ConfigLimitError:
    return ConfigLimitError(
        f"config file {path} is refused: {why}; a config is a few kB of plain keys and values "
        "(check where this file came from)"
    )


def load_config(path: Path) -> Any:
    """The document in the YAML (or ``.json``) file `path`, read within the module's limits.

    A file over a limit is a ConfigLimitError (a UserError naming the file); one that cannot be
    read an OSError, one that does not parse a ``yaml.YAMLError`` or ValueError."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _limit_error(path, f"it is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    text = data.decode("utf-8")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: plain data only
    except _Refused as exc:
        raise _limit_error(path, str(exc)) from None
    except RecursionError:
        raise _limit_error(path, "it is nested too deeply") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping from `path`; a UserError naming the file otherwise."""
    try:
        data = load_config(path)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text: {exc.reason}") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {first}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping (sections process, model, "
            f"data, optim, train, sample), got {type(data).__name__}"
        )
    return data


def saved_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The config `run_dir` was trained with, when it holds a run to resume (else None).

    A run folder may come from anyone, so a data source in it that is a command or a URL
    (`is_command_or_url`) is withheld: it becomes a WITHHELD marker that the resolvers refuse
    (`refuse_withheld_source`) unless the user gives the source again. Its ``data.cache_dir``
    is dropped (a run folder does not choose where fdm writes; the cache is only a speed-up):
    the default or $FDM_DATA_CACHE serves unless the user gives it again."""
    path = run_dir / ckpt.CONFIG_FILE
    if not path.is_file() or ckpt.latest_checkpoint(run_dir) is None:
        return None
    saved = read_config_file(path)
    data = saved.get("data")
    if isinstance(data, dict) and is_command_or_url(data.get("source")):
        data["source"] = WITHHELD + str(path)
    if isinstance(data, dict) and data.get("cache_dir") is not None:
        logger.warning(
            "not using data.cache_dir %r from %s (a run folder does not choose where fdm "
            "writes); give it again with --set data.cache_dir=... to keep it",
            data["cache_dir"],
            path,
        )
        data["cache_dir"] = None
    return saved


def is_command_or_url(source: object) -> bool:
    """Whether a data source is a ``pipe:`` shell command or a URL (anything with a scheme, as
    webdataset parses it after leading blanks; a one-letter scheme is a Windows drive)."""
    if not isinstance(source, str):
        return False
    text = source.strip().lower()
    try:
        scheme = urlsplit(text).scheme
    except ValueError:
        return True
    return text.startswith("pipe:") or len(scheme) > 1


def refuse_withheld_source(raw: dict[str, Any]) -> None:
    """A UserError when `raw` (the layered config) still has the data source that
    `saved_run_config` withheld, i.e. the user did not give it again."""
    data = raw.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    if isinstance(source, str) and source.startswith(WITHHELD):
        raise UserError(
            f"{source.removeprefix(WITHHELD)} names a command or URL as data.source, which fdm "
            "never takes from a run folder (it would run it or download from it); if you trust "
            "it, give it again: `data` SOURCE (or `overrides` data.source=SOURCE)"
        )
