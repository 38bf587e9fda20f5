"""Scheduling: which nodes must run, in what order, and who waits for whom.

Everything is explicit stacks and counters (no recursion): a node waits on a count of unfinished
sources and is queued when it drops to zero. That bookkeeping is written once, in `_require`'s loop,
which runs once per node of a run; `_wait_for` (a lazy input asked for, an expansion's outputs) hands
its node to the same loop. A mixin of `Execution`.
"""

from __future__ import annotations

from .state import DONE, NEW, WAITING, NodeState


class Scheduling:
    def _require(self, roots, parked: tuple | None = None) -> None:
        """Make sure `roots` get values: serve them from the cache or queue them with their missing
        inputs. `parked` = (node, source ids): that node waits for those sources first."""
        cache = self.cache
        nodes = self.nodes
        ready = self.ready
        stack = list(roots)
        while stack or parked is not None:
            if parked is not None:
                node, dep_ids = parked
                parked = None
            else:
                node = stack.pop()
                if node.state != NEW:
                    continue
                if node.ckey is not None and not node.volatile and (node.lazy is None or node.key is not None):
                    entry = cache.get(node.ckey)
                    if entry is not None and (node.lazy is None or self._consumed_match(node, entry.consumed)):
                        self._serve(node, entry)
                        continue
                dep_ids = node.deps
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
                ready.append(node)

    def _wait_for(self, node: NodeState, sources: list[NodeState]) -> None:
        """Park `node` until `sources` are done (they are required here)."""
        self._require((), (node, [source.id for source in sources]))

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
