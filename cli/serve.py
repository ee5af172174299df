"""``seen serve``: start the HTTP service; every setting is an option, the environment fills the rest."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from cli.commands import help_of
from service.config import CONFIG_FILE_VARIABLE, Settings


def _option_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    base = annotation
    if typing.get_origin(base) is types.UnionType:  # ``float | None``: the option takes the float
        base = next(arg for arg in typing.get_args(base) if arg is not type(None))
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is typing.Literal:
        return str, {"choices": list(typing.get_args(base))}
    if base in (int, float):
        return base, {}
    return str, {}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help=help_of("serve"),
        description="Every option is also read from SEEN_<OPTION> in the environment; options win.",
    )
    parser.add_argument("--config", help=f"TOML file of settings (same as {CONFIG_FILE_VARIABLE})")
    for name, field in Settings.model_fields.items():
        kind, extra = _option_type(field.annotation)
        help_text = (field.description or "").replace("%", "%%")
        if field.default not in (None, PydanticUndefined, [], "") and not isinstance(field.default, bool | list):
            help_text += f" (default: {field.default})".replace("%", "%%")
        elif isinstance(field.default, bool):
            help_text += f" (default: {'on' if field.default else 'off'})"
        if kind is not None:
            extra["type"] = kind
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=help_text, **extra)
    parser.set_defaults(run=run)


def _problem(location: tuple[Any, ...], message: str) -> str:
    """``max_batch_size: Input should be ...``, or the bare message of a check on several settings."""
    message = message.removeprefix("Value error, ")
    where = ".".join(map(str, location))
    return f"{where}: {message}" if where else message


def run(args: argparse.Namespace) -> int:
    from service.server import serve  # uvicorn and the app are only imported when serving

    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None}
    try:
        settings = Settings.load(args.config, **overrides)
    except ValidationError as error:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in error.errors())
        raise ValueError(f"invalid settings: {problems}") from error
    return serve(settings)
