"""One router module per API area."""
