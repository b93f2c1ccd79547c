"""Lungwatch's traffic generator: open- and closed-loop load, an honest report, reconciliation."""
