"""What crosses the wire between Lungwatch processes: header names and the gateway's lean path.

The lean path is how the gateway asks the model server for predictions: rows it already
validated go in as `{"rows": [[23 integers], ...]}` and the answer is
`{"probabilities": [[p_low, p_medium, p_high], ...]}`, one row per input row, in order.
It skips what MLflow's `/invocations` does for any client (pandas frames, schema
enforcement, its JSON encoder), which stays available and gives the same numbers.
"""

from __future__ import annotations

# Every model-server response names the model version that produced it; the gateway reports
# it in its answers and in `model_info`, so a retrained model needs no gateway restart.
MODEL_VERSION_HEADER = "x-model-version"
# Which of the model server's models scores a lean-path call (request) and which did
# (response): the champion, or a challenger served beside it. A request for the challenger
# when none is loaded is answered by the champion, and the response says so.
MODEL_ROLE_HEADER = "x-lungwatch-model-role"
CHAMPION = "champion"
CHALLENGER = "challenger"
# The gateway's default header whose value keeps a caller on one version under canary.
CANARY_STICKY_HEADER = "x-lungwatch-sticky-key"

ROWS_PATH = "/lungwatch/predict-rows"
ROWS_KEY = "rows"
PROBABILITIES_KEY = "probabilities"
JSON = "application/json"
