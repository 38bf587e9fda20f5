"""Scheduling: which nodes must run, in what order, and who waits for whom.

Everything is explicit stacks and counters (no recursion): a node waits on a count of unfinished
sources and is queued when it drops to zero. `_park` is the one place that bookkeeping is written.
A mixin of `Execution`.
"""

from __future__ import annotations

from .state import DONE, NEW, WAITING, NodeState


class Scheduling:
    def _park(self, node: NodeState, dep_ids, stack: list) -> None:
        """Make `node` wait for its unfinished sources (by id); queue it at once when there are none.
        Sources nobody has asked for yet (state NEW) go onto `stack`, for the caller to require."""
        nodes = self.nodes
        waiting = 0
        for dep_id in dep_ids:
            source = nodes[dep_id]
            if source.state != DONE:
                if source.waiters is None:
                    source.waiters = [node]
                else:
                    source.waiters.append(node)
                waiting += 1
                if source.state == NEW:
                    stack.append(source)
        node.state = WAITING
        node.waiting = waiting
        if not waiting:
            self.ready.append(node)

    def _require(self, roots) -> None:
        """Make sure `roots` get values: serve from the cache or queue them with their missing inputs."""
        cache = self.cache
        park = self._park
        stack = list(roots)
        while stack:
            node = stack.pop()
            if node.state != NEW:
                continue
            if node.ckey is not None and not node.volatile and (node.lazy is None or node.key is not None):
                entry = cache.get(node.ckey)
                if entry is not None and (node.lazy is None or self._consumed_match(node, entry.consumed)):
                    self._serve(node, entry)
                    continue
            park(node, node.deps, stack)

    def _wait_for(self, node: NodeState, sources: list[NodeState]) -> None:
        """Park `node` until `sources` are done (they are required here)."""
        fresh: list[NodeState] = []
        self._park(node, [source.id for source in sources], fresh)
        if fresh:
            self._require(fresh)

    def _done(self, node: NodeState) -> None:
        node.state = DONE
        waiters = node.waiters
        if waiters is not None:
            ready = self.ready
            for waiter in waiters:
                waiter.waiting -= 1
                if not waiter.waiting:
                    ready.append(waiter)
            node.waiters = None
