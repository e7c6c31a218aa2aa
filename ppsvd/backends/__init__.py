"""Transport registry: name -> where the implementation lives, imported only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ppsvd.errors import ConfigError

if TYPE_CHECKING:
    from ppsvd.backends.base import Transport

_REGISTRY: dict[str, str] = {
    "gloo": "ppsvd.backends.torch_p2p:GlooTransport",
    "nccl": "ppsvd.backends.torch_p2p:NcclTransport",
    "zmq": "ppsvd.backends.zmq:ZmqTransport",
}


def available() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def load(name: str) -> type[Transport]:
    """The Transport class registered under name; imports its module on first use."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"--transport {name!r} is not one of {', '.join(_REGISTRY)}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
