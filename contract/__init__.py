"""What every Lungwatch process agrees on: features, dataset rows, wire names, drift bins, settings.

Imports nothing heavy (no MLflow, scikit-learn or pandas): the gateway and loadgen depend on it.
"""
