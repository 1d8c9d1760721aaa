"""Registry of hardware models: the built-ins plus plug-ins from entry points.

Third-party packages register a model class under the entry-point group ``inag.hwmodels``::

    [project.entry-points."inag.hwmodels"]
    my_energy = "my_pkg.models:MyEnergy"

A plug-in that fails to import warns and is skipped (one broken package must not stop every
command); two models claiming one name is an error, since a platform file could then mean
either.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from importlib.metadata import entry_points

from pydantic import ValidationError

from hwmodels.base import HardwareModel, HardwareModelError
from hwmodels.builtin import BUILTIN_MODELS
from inag.platform import ROLES, Platform, format_validation_error

ENTRY_POINT_GROUP = "inag.hwmodels"


@lru_cache(maxsize=1)
def _registry() -> dict[str, type[HardwareModel]]:
    models: dict[str, type[HardwareModel]] = {m.name: m for m in BUILTIN_MODELS}
    origin = {name: "built-in" for name in models}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plug-in
            warnings.warn(
                f"hardware-model plug-in {ep.name!r} ({ep.value}) failed to load and "
                f"is skipped: {type(exc).__name__}: {exc}",
                stacklevel=2,
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, HardwareModel)):
            warnings.warn(
                f"hardware-model plug-in {ep.name!r} ({ep.value}) is not a "
                "HardwareModel subclass and is skipped",
                stacklevel=2,
            )
            continue
        name = getattr(cls, "name", ep.name)
        here = f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP})"
        if name in models:
            raise HardwareModelError(
                f"hardware model name {name!r} is claimed twice: by {origin[name]} and by "
                f"{here}; rename one of them"
            )
        models[name] = cls
        origin[name] = here
    return models


def clear_cache() -> None:
    """Forget discovered plug-ins (tests install plug-ins at run time)."""
    _registry.cache_clear()


def available_models() -> dict[str, type[HardwareModel]]:
    return dict(_registry())


def get_model_class(name: str) -> type[HardwareModel]:
    reg = _registry()
    if name not in reg:
        raise HardwareModelError(
            f"unknown hardware model {name!r}; available: {', '.join(sorted(reg))}"
        )
    return reg[name]


def build_models(platform: Platform) -> dict[str, HardwareModel]:
    """Instantiate the platform's models, role by role, validating their parameters."""
    out: dict[str, HardwareModel] = {}
    where = platform.path or platform.name
    for role, choice in platform.cost_models.items():
        try:
            cls = get_model_class(choice.model)
        except HardwareModelError as exc:
            raise HardwareModelError(f"{where}: cost_models.{role}: {exc}") from None
        expected = ROLES.get(role)
        if expected is not None and cls.quantity != expected:
            raise HardwareModelError(
                f"{where}: cost_models.{role}: model {choice.model!r} computes "
                f"{cls.quantity!r}, but the {role!r} role needs {expected!r}"
            )
        known = set(cls.Params.model_fields) | {
            f.alias for f in cls.Params.model_fields.values() if f.alias
        }
        unknown = sorted(set(choice.params) - known)
        if unknown:  # also for plug-ins whose Params would silently ignore extra keys
            raise HardwareModelError(
                f"{where}: cost_models.{role}.params: unknown parameter(s) {unknown} for "
                f"model {choice.model!r}; its parameters: {', '.join(sorted(known)) or '(none)'}"
            )
        try:
            params = cls.Params.model_validate(choice.params)
        except ValidationError as exc:
            msg = format_validation_error(exc, f"{where}: cost_models.{role}.params")
            raise HardwareModelError(msg) from None
        out[role] = cls(platform, params)
    return out
