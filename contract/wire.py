"""What crosses the wire between Lungwatch processes: the header names."""

from __future__ import annotations

# Every model-server response names the model version that produced it; the gateway reports
# it in its answers and in `model_info`, so a retrained model needs no gateway restart.
MODEL_VERSION_HEADER = "x-model-version"
