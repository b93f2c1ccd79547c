"""The 23 clinical features every process agrees on: names, dataset columns, accepted ranges."""

from __future__ import annotations

from dataclasses import dataclass

# The seed encoded Level as Low 0, Medium 1, High 2; clients still rely on it.
LABELS: tuple[str, ...] = ("Low", "Medium", "High")
TARGET_COLUMN = "Level"


@dataclass(frozen=True)
class Feature:
    name: str  # snake_case, the JSON key and the MLflow signature column
    column: str  # the dataset's own column header
    minimum: int
    maximum: int


# Order is the seed's `{"features": [...]}` order (file order). Age accepts any adult or
# child age; the ordinal levels accept the scale seen in the data (1 to its maximum),
# because the model never saw a level beyond it and would extrapolate silently.
FEATURES: tuple[Feature, ...] = (
    Feature("age", "Age", 1, 120),
    Feature("gender", "Gender", 1, 2),
    Feature("air_pollution", "Air Pollution", 1, 8),
    Feature("alcohol_use", "Alcohol use", 1, 8),
    Feature("dust_allergy", "Dust Allergy", 1, 8),
    Feature("occupational_hazards", "OccuPational Hazards", 1, 8),
    Feature("genetic_risk", "Genetic Risk", 1, 7),
    Feature("chronic_lung_disease", "chronic Lung Disease", 1, 7),
    Feature("balanced_diet", "Balanced Diet", 1, 7),
    Feature("obesity", "Obesity", 1, 7),
    Feature("smoking", "Smoking", 1, 8),
    Feature("passive_smoker", "Passive Smoker", 1, 8),
    Feature("chest_pain", "Chest Pain", 1, 9),
    Feature("coughing_of_blood", "Coughing of Blood", 1, 9),
    Feature("fatigue", "Fatigue", 1, 9),
    Feature("weight_loss", "Weight Loss", 1, 8),
    Feature("shortness_of_breath", "Shortness of Breath", 1, 9),
    Feature("wheezing", "Wheezing", 1, 8),
    Feature("swallowing_difficulty", "Swallowing Difficulty", 1, 8),
    Feature("clubbing_of_finger_nails", "Clubbing of Finger Nails", 1, 9),
    Feature("frequent_cold", "Frequent Cold", 1, 7),
    Feature("dry_cough", "Dry Cough", 1, 7),
    Feature("snoring", "Snoring", 1, 7),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)

# The first row of the dataset (a Low case): used as the OpenAPI and README example.
EXAMPLE_FEATURES: tuple[int, ...] = (
    33,
    1,
    2,
    4,
    5,
    4,
    3,
    2,
    2,
    4,
    3,
    2,
    2,
    4,
    3,
    4,
    2,
    2,
    3,
    1,
    2,
    3,
    4,
)
