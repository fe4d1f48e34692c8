"""pithnode.protocol."""
