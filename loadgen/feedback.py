"""`--feedback`: the dataset's true level posted back to `/feedback` for every row predicted.

A `ResponseHook`: after each 200 from `/predict` or `/predict/batch`, every labelled row gets
`POST /feedback {"prediction_id": ..., "level": "Low"|"Medium"|"High"}`. Shifted rows
(`--drift`) have no label and get none. Feedback calls are not prediction requests: the
recorder (and so the report's latency, error rate and the Prometheus reconciliation) never
sees them; they are tallied here. The accuracy over the rows whose feedback the gateway
accepted is what its online-accuracy gauge must show for the same rows, and the tally per
model version (the version that answered the prediction) is what its
`model_feedback_outcomes_total{model_version}` must have counted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from contract.features import LABELS
from loadgen.stats import CONNECTION, NO_VERSION, OTHER, TIMEOUT, Outcome, version_order

FEEDBACK = "/feedback"
_HEADERS = {"content-type": "application/json"}


def prediction_ids(body: object) -> tuple[str | None, ...]:
    """The `prediction_id` of each row of a /predict or /predict/batch answer, in row order."""
    if not isinstance(body, dict):
        return ()
    items = body.get("predictions")
    if isinstance(items, list):
        return tuple(_id(item) for item in items)
    if "prediction_id" in body:
        return (_id(body),)
    return ()


def _id(item: object) -> str | None:
    value = item.get("prediction_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and value else None


@dataclass
class FeedbackHook:
    """Posts true levels back and tallies what the gateway said."""

    sent: int = 0
    accepted: int = 0  # 200 {"status": "recorded"}
    rejected: Counter[str] = field(default_factory=Counter)  # by the answer's `error` code
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # no HTTP answer
    skipped_unlabelled: int = 0  # shifted rows: no true level to send
    skipped_no_id: int = 0  # an answer row without a prediction_id (should not happen)
    # Over the accepted rows: (true class, predicted class) pairs, for accuracy and recall.
    confusion: Counter[tuple[int, int]] = field(default_factory=Counter)
    # By the model_version of the answer that carried the prediction (NO_VERSION if none):
    # feedback posted, accepted, and right among the accepted.
    sent_by_version: Counter[str] = field(default_factory=Counter)
    accepted_by_version: Counter[str] = field(default_factory=Counter)
    correct_by_version: Counter[str] = field(default_factory=Counter)

    async def __call__(self, client: httpx.AsyncClient, outcome: Outcome) -> None:
        if outcome.status != 200:
            return
        ids = prediction_ids(outcome.body)
        labels = outcome.spec.labels
        if len(ids) != len(labels) or len(outcome.predictions) != len(labels):
            self.skipped_no_id += len(labels)
            return
        # One call at a time per answer: a request's slot never holds more than one connection,
        # so feedback cannot starve the predictions of pooled connections.
        version = outcome.model_version or NO_VERSION
        for pid, label, predicted in zip(ids, labels, outcome.predictions, strict=True):
            if label is None:
                self.skipped_unlabelled += 1
            elif pid is None:
                self.skipped_no_id += 1
            else:
                await self.send(client, pid, label, predicted, version)

    async def send(
        self,
        client: httpx.AsyncClient,
        prediction_id: str,
        label: int,
        predicted: int,
        model_version: str = NO_VERSION,
    ) -> None:
        self.sent += 1
        self.sent_by_version[model_version] += 1
        body = json.dumps({"prediction_id": prediction_id, "level": LABELS[label]}).encode()
        try:
            response = await client.post(FEEDBACK, content=body, headers=_HEADERS)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            self.errors[CONNECTION] += 1
            return
        except httpx.TimeoutException:
            self.errors[TIMEOUT] += 1
            return
        except httpx.HTTPError:
            self.errors[OTHER] += 1
            return
        self.statuses[response.status_code] += 1
        answer = _json(response)
        if response.status_code == 200 and answer.get("status") == "recorded":
            self.accepted += 1
            self.confusion[(label, predicted)] += 1
            self.accepted_by_version[model_version] += 1
            self.correct_by_version[model_version] += label == predicted
        else:
            code = answer.get("error") or answer.get("status") or f"http_{response.status_code}"
            self.rejected[str(code)] += 1

    def accuracy(self) -> float | None:
        total = sum(self.confusion.values())
        right = sum(n for (true, predicted), n in self.confusion.items() if true == predicted)
        return right / total if total else None

    def recall(self) -> dict[str, float | None]:
        """Per true class, over the accepted rows."""
        out: dict[str, float | None] = {}
        for cls, name in enumerate(LABELS):
            total = sum(n for (true, _), n in self.confusion.items() if true == cls)
            right = self.confusion[(cls, cls)]
            out[name] = right / total if total else None
        return out

    def by_model_version(self) -> dict[str, dict[str, int]]:
        """Per version: feedback `sent`, `accepted` (what the gateway counted) and `correct`
        (accepted with the predicted level right)."""
        return {
            version: {
                "sent": self.sent_by_version[version],
                "accepted": self.accepted_by_version[version],
                "correct": self.correct_by_version[version],
            }
            for version in version_order(self.sent_by_version)
        }

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "status_codes": {str(k): v for k, v in sorted(self.statuses.items())},
            "no_answer": dict(sorted(self.errors.items())),
            "skipped_unlabelled": self.skipped_unlabelled,
            "skipped_no_id": self.skipped_no_id,
            "accuracy_of_accepted": self.accuracy(),
            "recall_of_accepted": self.recall(),
            "by_model_version": self.by_model_version(),
        }


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
