"""pithnode.node."""
