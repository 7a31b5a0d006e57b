"""Shared fixtures. Each real resource (temp data dir, free ports, processes) gets a fixture
that cleans up what it started."""
