"""The example model every backend serves: a digit classifier on scikit-learn's bundled digits data.

Why this model: it needs no download (the 8x8 digits ship inside scikit-learn), trains in well
under a second, and gives answers a test can check (accuracy on held-out images), so the tests
exercise a real model rather than an echo.

Contract shared by the Triton and TF Serving backends and by the clients:
- input: float32 ``[batch, 64]``, pixel values 0..16 as in ``load_digits`` (the model scales);
- output: ``label`` int64 ``[batch]`` and ``probabilities`` float32 ``[batch, 10]``.

A model directory (``--model-dir``, e.g. the one ``ratls sidecar unseal`` decrypts into) holds
``digits.pkl``: a pickled estimator with ``predict_proba``. Pickle runs code when loaded, so only
load a directory whose bundle signature was verified (the unseal step does that).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratls.errors import Reason, UsageError

N_FEATURES = 64
N_CLASSES = 10
MODEL_FILE = "digits.pkl"
#: the split is fixed so that every process agrees on which images are held out
_SPLIT_SEED = 0
_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DigitsModel:
    """A fitted estimator plus the scaling it was trained with."""

    estimator: object
    scale: float = 16.0

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` float32 [n, 64] -> (labels int64 [n], probabilities float32 [n, 10])."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, N_FEATURES)
        proba = self.estimator.predict_proba(x / self.scale).astype(np.float32)
        return proba.argmax(axis=1).astype(np.int64), proba


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype(np.float32), y, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=y)


def train() -> DigitsModel:
    """Fit a logistic regression on the training part of the split (about a second)."""
    from sklearn.linear_model import LogisticRegression

    x_train, _, y_train, _ = _split()
    est = LogisticRegression(max_iter=2000).fit(x_train / DigitsModel.scale, y_train)
    return DigitsModel(estimator=est)


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The images the model never saw: (x float32 [n, 64], y int64 [n])."""
    _, x_test, _, y_test = _split()
    return x_test, y_test.astype(np.int64)


def save(model: DigitsModel, directory: Path) -> Path:
    """Write ``digits.pkl`` into ``directory`` (what a model owner bundles and encrypts)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    path.write_bytes(pickle.dumps(model.estimator))
    return path


def load(directory: Path) -> DigitsModel:
    """Load ``digits.pkl`` from a verified model directory."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise UsageError(Reason.CONFIG_INVALID, f"model directory {directory} has no {MODEL_FILE}")
    est = pickle.loads(path.read_bytes())
    if not hasattr(est, "predict_proba"):
        raise UsageError(Reason.CONFIG_INVALID, f"{path} does not hold a classifier with predict_proba")
    return DigitsModel(estimator=est)


def train_or_load(model_dir: Path | None) -> DigitsModel:
    return load(model_dir) if model_dir else train()
