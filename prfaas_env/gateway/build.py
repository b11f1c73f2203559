"""Building a picker from files: an inventory plus a bundle or a heuristic by name.

The one place the gateway reaches into the router and the cost tables, so that the rest of
the package only sees a :class:`~prfaas_env.gateway.picker.Picker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prfaas_env.errors import ConfigError
from prfaas_env.gateway.datastore import Datastore
from prfaas_env.gateway.inventory import Inventory, load_inventory
from prfaas_env.gateway.picker import Picker
from prfaas_env.sim.costs import CostTables, build_tables

__all__ = ["build_picker", "cost_tables"]


def cost_tables(inventory: Inventory) -> CostTables:
    """The inventory topology's cost tables (the simulator's, one per cluster)."""
    topo = inventory.topology
    return build_tables(topo.cost_models(), [c.max_batch for c in topo.clusters])


def build_picker(
    inventory: str | Path | Inventory,
    bundle: str | Path | None = None,
    policy: str | None = None,
    params: dict[str, Any] | None = None,
    clock: Any = None,
) -> Picker:
    """A picker for ``inventory`` deciding with a bundle's model (``bundle``: a folder or
    ``pretrained:NAME``) or with the built-in heuristic ``policy`` (with ``params``); exactly
    one of the two.

    With a bundle exported from one scenario's run the inventory may leave out ``topology:``
    (the bundle's is used); when it gives one, its routes must be the bundle's. A per-route
    bundle (such as ``pretrained:generalist``) serves the inventory's topology, with the
    inventory's ``picker.ttft_slo_s`` and ``picker.expected_output_tokens``. ConfigError names
    the file and key of any mistake."""
    if (bundle is None) == (policy is None):
        raise ConfigError("give either a bundle (--bundle DIR) or a heuristic (--policy NAME)")
    if bundle is not None:
        from prfaas_env.router import Router, resolve_bundle
        from prfaas_env.router.routes import RouteRouter, is_route_bundle

        path = resolve_bundle(bundle)
        if is_route_bundle(path):  # one network for any topology: the inventory's
            inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
            tables = cost_tables(inv)
            router: Any = RouteRouter(
                path,
                inv.topology,
                inv.picker.ttft_slo_s,
                inv.picker.expected_output_tokens,
            )
        else:
            router = Router(path)
            topo = router.live.topology
            inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory, topo)
            tables = cost_tables(inv)
    else:
        from prfaas_env.router.heuristic import HeuristicRouter

        inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
        tables = cost_tables(inv)
        try:
            router = HeuristicRouter(
                inv.topology, str(policy), params, inv.picker.expected_output_tokens, tables=tables
            )
        except (ConfigError, KeyError) as exc:
            raise ConfigError(f"--policy {policy}: {exc}") from exc
    store = Datastore(inv, tables) if clock is None else Datastore(inv, tables, clock)
    return Picker(inv, router, store)
