"""The one description of a job's properties: a field of the Job record says how it shows everywhere.

A property is declared once, as a field of `model.job.Job` made with `prop()`. From that field
come the store's column (every field of the record is stored), the wire model's field of
`JobInfo` and, when settable, of the PATCH body `JobProperties` (schema/models.py), whether a
change makes a JOB_MODIFICATION event (events/bus.py), the Python client's attribute
(client/sync.py) and the row `openbits info` shows (cli/render.py). A new property is one
`prop()` plus its behaviour; tests/test_properties.py checks that every side follows.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

@dataclass(frozen=True, slots=True)
class Property:
    """How one job property shows outside the record."""

    #: the wire field's description (OpenAPI) and the docstring of the client's attribute
    doc: str
    #: the label of its row in `openbits info`; "" = no row
    label: str = ""
    #: how `openbits info` shows the value: text, name (an enumeration), seconds, rate, time, yes_no,
    #: lines, cost_flags
    shown_as: str = "text"
    #: what `openbits info` shows for 0 or empty instead of the value ("no limit"); "" = the value itself
    unset: str = ""
    #: a PATCH of /v1/jobs/{job} may change it (BITS's SetXxx)
    settable: bool = False
    #: the Python client's Job has it as a plain attribute (job.priority = HIGH); settable ones by default
    attribute: bool | None = None
    #: it is a field of JobInfo (GET /v1/jobs/{job}); False keeps it between the daemon and its store
    wire: bool = True
    #: a change is a JOB_MODIFICATION event
    notifies: bool = True
    #: pydantic Field() limits of the wire value (ge, le, min_length, max_length); item_max_length for lists
    limits: Mapping[str, Any] | None = None

    @property
    def client_attribute(self) -> bool:
        return self.settable if self.attribute is None else self.attribute


def prop(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **how: Any) -> Any:
    """A Job field that is a property; `how` are the fields of Property."""
    return field(default=default, default_factory=factory, metadata={"property": Property(**how)})


@dataclass(frozen=True, slots=True)
class Described:
    """A property with its name, its record type and its default, as the other floors read it."""

    name: str
    type: Any
    default: Any
    how: Property

    @property
    def is_list(self) -> bool:
        """A list, or a list or None: kept by reference in the record, so copied where a change is looked for."""
        return list in (typing.get_origin(self.type), *map(typing.get_origin, typing.get_args(self.type)))


def described(record: type) -> tuple[Described, ...]:
    """The properties of `record` (a dataclass), in declaration order."""
    hints = typing.get_type_hints(record)
    found = []
    for f in dataclasses.fields(record):
        how = f.metadata.get("property")
        if how is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        found.append(Described(f.name, hints[f.name], default, how))
    return tuple(found)
