"""Named fields packed into a few arrays, for state passed through compiled code.

Compiled functions receive the simulator state as named tuples of arrays, and every call
between them costs time per array in the tuple (about 8 ns each, measured). So related fields
of one dtype live side by side in one array whose last axis is the field
(``rf[env, slot, RF.ARR]``), and the kernel addresses them with IntEnum members (compile-time
constants). Python code keeps using the field names: :func:`add_views` gives the tuple class
a property per field that returns a view (``state.r_arr`` is ``state.rf[..., RF.ARR]``),
which reads and writes the packed array.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


def add_views(cls: Any, layout: dict[str, tuple[type[IntEnum], str]]) -> None:
    """Give the named-tuple class ``cls`` a view property per packed field of ``layout``
    (array name -> (enum of its fields, prefix of their Python names))."""
    for array, (enum, prefix) in layout.items():
        for member in enum:

            def view(self: Any, array: str = array, i: int = int(member)) -> Any:
                return getattr(self, array)[..., i]

            name = prefix + member.name.lower()
            setattr(
                cls, name, property(view, doc=f"``{array}[..., {enum.__name__}.{member.name}]``")
            )
