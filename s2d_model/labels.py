"""Label sets in the index order the authors' checkpoints and the datasets' annotation files use."""
from __future__ import annotations

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "dfew": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
    "ferv39k": ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),
    "mafw": ("Anger", "Anxiety", "Contempt", "Disappointment", "Disgust", "Fear", "Happiness",
             "Helplessness", "Neutral", "Sadness", "Surprise"),
    "rafdb": ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"),
    "affectnet7": ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger"),
    "affectnet8": ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt"),
}


def labels(name: str) -> tuple[str, ...]:
    try:
        return LABEL_SETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown label set '{name}': choose one of {', '.join(LABEL_SETS)}") from None
