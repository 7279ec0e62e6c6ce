"""Runtime shared by every Dialtone service."""
