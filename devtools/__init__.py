"""Development tooling shared by tests/ and bench/: the process runner and the statistics.

Product code (api, model, loadgen, contract, telemetry) never imports it.
"""
