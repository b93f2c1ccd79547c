"""Request and response bodies of the gateway, with validation that names the offending field.

Policy: features are whole numbers (JSON integers, or floats with no fractional part such
as 33.0) inside each feature's documented range; booleans, strings, null, NaN/Infinity,
fractions and unknown fields are refused with a 422 that names the field or position.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    create_model,
    model_validator,
)

from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES, FEATURES, LABELS, N_FEATURES, Feature

_JSON_TYPE_NAMES = {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}


def check_value(feature: Feature, value: Any) -> int:
    """One feature value as an int, or a ValueError that says what is wrong with it."""
    if value is None:
        raise ValueError("must be a number, got null")
    # bool is a subclass of int in Python: test it first so `true` is not read as 1.
    if type(value) in _JSON_TYPE_NAMES:
        raise ValueError(f"must be a number, got {_JSON_TYPE_NAMES[type(value)]}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if not value.is_integer():
            raise ValueError(f"must be a whole number, got {value}")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    if not feature.minimum <= value <= feature.maximum:
        shown = value if abs(value) < 10**12 else f"a {len(str(abs(value)))}-digit number"
        raise ValueError(f"must be between {feature.minimum} and {feature.maximum}, got {shown}")
    return value


def check_feature_list(values: Any) -> list[int]:
    """The positional form: exactly 23 values, each checked against its feature."""
    if not isinstance(values, list):
        raise ValueError(f"must be an array of {N_FEATURES} numbers")
    if len(values) != N_FEATURES:
        raise ValueError(f"must have exactly {N_FEATURES} values, got {len(values)}")
    checked: list[int] = []
    problems: list[str] = []
    for position, (feature, value) in enumerate(zip(FEATURES, values, strict=True)):
        try:
            checked.append(check_value(feature, value))
        except ValueError as exc:
            problems.append(f"features[{position}] ({feature.name}) {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return checked


FeatureVector = Annotated[
    list[int],
    BeforeValidator(check_feature_list),
    Field(
        min_length=N_FEATURES,
        max_length=N_FEATURES,
        description=f"The {N_FEATURES} features in dataset order: " + ", ".join(FEATURE_NAMES),
        examples=[list(EXAMPLE_FEATURES)],
    ),
]


def _patient_field(feature: Feature) -> Any:
    return (
        Annotated[int, BeforeValidator(partial(check_value, feature))],
        Field(ge=feature.minimum, le=feature.maximum, description=feature.column),
    )


Patient: type[BaseModel] = create_model(
    "Patient",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The features by name (snake_case of the dataset's columns).",
    **{feature.name: _patient_field(feature) for feature in FEATURES},
)

EXAMPLE_PATIENT: dict[str, Any] = dict(zip(FEATURE_NAMES, EXAMPLE_FEATURES, strict=True))


class PredictRequest(BaseModel):
    """One patient: either `features` (positional) or `patient` (by name), not both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"features": list(EXAMPLE_FEATURES)}, {"patient": EXAMPLE_PATIENT}]
        },
    )

    features: FeatureVector | None = None
    patient: Patient | None = None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _exactly_one_shape(self) -> PredictRequest:
        if (self.features is None) == (self.patient is None):
            which = "both" if self.features is not None else "neither"
            raise ValueError(
                f"send exactly one of `features` ({N_FEATURES} numbers in dataset order) "
                f"or `patient` (features by name); got {which}"
            )
        return self

    def row(self) -> list[int]:
        if self.features is not None:
            return list(self.features)
        assert self.patient is not None
        return [getattr(self.patient, name) for name in FEATURE_NAMES]


class BatchRequest(BaseModel):
    """Several patients in one call; the row limit is LUNGWATCH_GATEWAY_PREDICT_BATCH_MAX_ROWS."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"rows": [{"features": list(EXAMPLE_FEATURES)}, {"patient": EXAMPLE_PATIENT}]}
            ]
        },
    )

    rows: list[PredictRequest] = Field(min_length=1)


class Prediction(BaseModel):
    prediction: int = Field(description="0 Low, 1 Medium, 2 High (the seed's encoding)")
    label: str = Field(description="Low, Medium or High")
    prediction_probabilities: list[float] = Field(description="[P(Low), P(Medium), P(High)]")
    confidence: float = Field(description="The highest of the three probabilities")
    prediction_id: str = Field(description="Identifies this prediction in logs and feedback")


class PredictResponse(Prediction):
    model_version: str
    trace_id: str = Field(description="W3C trace id of this request (32 hex digits)")
    latency_seconds: float = Field(description="Gateway time for this request")


class BatchResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str
    trace_id: str
    latency_seconds: float


class FeedbackRequest(BaseModel):
    """The true level of an earlier prediction, once it is known."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prediction_id": "c19daa3908964c049dd80656505fec21"
                    "583a31c880dac61b2423a4cce1e0de2e",
                    "level": "Low",
                }
            ]
        },
    )

    prediction_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")
    level: Literal["Low", "Medium", "High"] | Annotated[StrictInt, Field(ge=0, le=2)] = Field(
        description="The true level: Low / Medium / High, or 0 / 1 / 2"
    )

    @property
    def true_class(self) -> int:
        return self.level if isinstance(self.level, int) else LABELS.index(self.level)


class FeedbackResponse(BaseModel):
    status: str
    prediction_id: str
    correct: bool


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. invalid_request")
    message: str = Field(description="What went wrong, naming the field or the fault")
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Each invalid field with its problem (the first 20)"
    )
    errors_omitted: int | None = Field(
        default=None, description="How many more problems were found than `errors` lists"
    )
