"""pithnode.storage."""
