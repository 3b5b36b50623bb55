"""The config file: defaults for the options of the commands that download, in TOML.

Which file: ``--config FILE``, else ``$DLMAN_CONFIG``, else ``config.toml`` in the user's config
directory (``$XDG_CONFIG_HOME/dlman``, else ``~/.config/dlman``; click's app directory on other
systems); ``--no-config`` reads none. A file named explicitly must exist; the default one need not.

Keys are the commands' long option names, each setting that option's default for every command
that has it::

    connections = 16
    limit-rate = "10M"
    header = ["User-Agent: me/1.0"]
    http2 = true

The precedence is command line > environment (``DLMAN_<KEY>``, e.g. ``DLMAN_LIMIT_RATE``) > config
file > built-in default: the file fills click's default map and each option reads its variable.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from dlman.errors import InvalidInputError

log = logging.getLogger("dlman")

ENV_CONFIG = "DLMAN_CONFIG"
NOT_IN_CONFIG = {  # options that name one file or one run: a default for them makes no sense
    "input-file": "it names one manifest",
    "output": "it names one file",
    "checksum": "it belongs to one file",
    "later": "it is a choice for one command",
    "url": "it belongs to one job",
    "help": "it is not an option of a download",
}
PATH_KEYS = ("dir", "load-cookies", "save-cookies")  # ~ is expanded in these
_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")


class ConfigError(InvalidInputError):
    """A config file that cannot be used; ``problems`` are ``FILE:LINE: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def locate(explicit: str | None, disabled: bool, environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The config file to read (None: none) and whether it must exist."""
    if disabled:
        return None, False
    named = explicit or environ.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser(), True
    return Path(click.get_app_dir("dlman")) / "config.toml", False


def env_name(key: str) -> str:
    """The environment variable that sets the option of config key ``key``."""
    return "DLMAN_" + key.upper().replace("-", "_")


def configurable(commands: Iterable[click.Command]) -> dict[str, list[tuple[str, click.Option]]]:
    """Config key -> the (command, option) pairs it sets: every long option but those in NOT_IN_CONFIG."""
    found: dict[str, list[tuple[str, click.Option]]] = {}
    for command in commands:
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden or not param.expose_value:
                continue
            for name in param.opts:
                key = name[2:]
                if name.startswith("--") and key not in NOT_IN_CONFIG:
                    found.setdefault(key, []).append((command.name or "", param))
    return found


def bind_environment(commands: Iterable[click.Command]) -> None:
    """Give every configurable option its ``DLMAN_<KEY>`` variable (the environment beats the file)."""
    for key, targets in configurable(commands).items():
        for _, option in targets:
            option.envvar = env_name(key)


def line_of(text: str, key: str) -> int | None:
    """The line where ``key`` is set (bare or quoted), for messages; None if it cannot be told."""
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _POSITION.search(message)
        if position:
            message = message[:position.start()]
            raise ConfigError([f"{path}:{position.group(1)}: {message[:1].lower()}{message[1:]}"]) from None
        raise ConfigError([f"{path}: {message}"]) from None


def read(path: Path, must_exist: bool) -> tuple[str, dict[str, Any]] | None:
    """The file's text and its TOML values; None when an optional file is not there."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        if must_exist:
            raise ConfigError([f"{path}: no such config file"]) from None
        return None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"]) from None
    except OSError as error:
        raise ConfigError([f"cannot read config file {path}: {error.strerror or error}"]) from None
    return text, _parse_toml(text, path)


def _check_value(option: click.Option, command: click.Command, value: Any) -> Any:
    """The value as the option takes it from the file (ValueError or click.BadParameter if it cannot)."""
    if isinstance(value, (dict, list)) and not (option.multiple and isinstance(value, list)):
        raise ValueError(f"expected {'a list or ' if option.multiple else ''}a single value, got a "
                         f"{'table' if isinstance(value, dict) else 'list'}")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, (str, int, float, bool)):
            raise ValueError(f"expected a string, number or boolean, got {type(item).__name__}")
        if option.is_flag and not isinstance(item, bool):
            raise ValueError(f"expected true or false, got {item!r}")
        if not option.is_flag and isinstance(item, bool):
            raise ValueError(f"expected a value, not {str(item).lower()}")
        if isinstance(option.type, click.types.IntParamType) and isinstance(item, float) and not item.is_integer():
            raise ValueError(f"expected a whole number, got {item!r}")
    given = list(items) if option.multiple else value
    with click.Context(command, resilient_parsing=False) as ctx:
        option.process_value(ctx, given)
    return given


def default_map(path: Path, text: str, values: Mapping[str, Any],
                commands: Iterable[click.Command]) -> dict[str, dict[str, Any]]:
    """click's default map for ``commands`` from a config file's values; ConfigError naming every bad line."""
    by_name = {command.name: command for command in commands}
    targets = configurable(by_name.values())
    result: dict[str, dict[str, Any]] = {name or "": {} for name in by_name}
    problems = []
    for key, value in values.items():
        line = line_of(text, key)
        where = f"{path}:{line}" if line else str(path)
        if key in NOT_IN_CONFIG:
            problems.append(f"{where}: '{key}' cannot be set in a config file: {NOT_IN_CONFIG[key]}")
            continue
        if key not in targets:
            problems.append(f"{where}: unknown key '{key}' (known: {', '.join(sorted(targets))})")
            continue
        if key in PATH_KEYS and isinstance(value, str):
            value = os.path.expanduser(value)
        try:
            for command_name, option in targets[key]:
                result[command_name][option.name or ""] = _check_value(option, by_name[command_name], value)
        except (ValueError, click.BadParameter) as error:
            message = error.message if isinstance(error, click.ClickException) else str(error)
            problems.append(f"{where}: bad value for '{key}': {message}")
    if problems:
        raise ConfigError(problems)
    return result


def warn_if_readable(path: Path, values: Mapping[str, Any]) -> None:
    """A file that holds headers (credentials, often) should be readable by its owner only."""
    if not values.get("header"):
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s holds headers and other users can read it: chmod 600 %s", path, path)


def load(explicit: str | None, disabled: bool, commands: Iterable[click.Command],
         environ: Mapping[str, str] = os.environ) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """The config file in force and its default map ({} without one)."""
    path, must_exist = locate(explicit, disabled, environ)
    if path is None:
        return None, {}
    found = read(path, must_exist)
    if found is None:
        return None, {}
    text, values = found
    defaults = default_map(path, text, values, commands)
    warn_if_readable(path, values)
    return path, defaults
