"""Where work runs on a Ray cluster: the node id a stage records, and the start-up check that a job on a
cluster of several nodes reads and writes a store every node sees.

    from pipeline.cluster import current_node, check_shared_storage
    current_node()                      # this worker's Ray node id (hex), None outside Ray
    check_shared_storage(cfg)           # ConfigError naming input.uri / output.uri if local on >1 node
"""

from __future__ import annotations

from typing import Optional

from typing import TYPE_CHECKING

from pipeline.storage import is_local

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def current_node() -> Optional[str]:
    """The Ray node id of the calling worker (what the run record's `nodes` lists), None outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # a stage used without Ray, e.g. in a unit test
        return None


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_shared_storage(cfg: "JobConfig", input_uri: Optional[str] = None) -> None:
    """Refuse a local input.uri or output.uri when the connected Ray cluster has more than one node: each
    actor would read from, or write rows to, the disk of whichever node it landed on."""
    from pipeline.config import ConfigError

    nodes = alive_nodes()
    if nodes <= 1:
        return
    for key, uri in (("input.uri", input_uri or cfg.input.uri), ("output.uri", cfg.output.uri)):
        if is_local(uri):
            raise ConfigError(
                f"{key}: {uri!r} is a local path, but the Ray cluster has {nodes} nodes: each actor would use the "
                f"disk of whichever node it runs on. Use storage every node reads (s3://..., a shared mount "
                f"through a URL scheme) or a one-node Ray."
            )
