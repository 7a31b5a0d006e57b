"""The failure matrix: real node processes, concurrent senders, one fault per scenario."""
