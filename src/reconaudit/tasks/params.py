"""Parameters shared by the diagnostic models (training, thresholds) and their validation."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# parameters


class TaskConfigError(ValueError):
    """A diagnostic model was configured wrongly; the message names the key and what is allowed."""


class TrainParams(BaseModel):
    """Training settings shared by every network diagnostic model.

    Attributes
    ----------
    epochs:
        Maximum number of epochs (early stopping may end sooner).
    batch_size:
        Training mini-batch size.
    eval_batch_size:
        Batch size for validation losses and :meth:`predict`.
    lr, weight_decay:
        Adam learning rate and L2 weight decay.
    patience:
        Early stopping: epochs without a lower validation loss before training stops.
    augment:
        Light augmentation (random circular shifts of up to H/16 pixels); off by default.
    max_batches:
        Train on at most this many mini-batches per epoch (the first of the epoch's shuffled
        order), so a large split trains in a fixed time; ``None``: every batch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    augment: bool = False
    max_batches: int | None = Field(None, ge=1)


def validate_params(model: type[BaseModel], params: dict, where: str) -> BaseModel:
    """Validate ``params`` against the pydantic ``model``; raise :class:`TaskConfigError` naming the key.

    Unknown keys are reported with the list of allowed ones; bad values with pydantic's reason
    (which lists the allowed values of a choice) and the value received.
    """
    from reconaudit.validation import validate_params as _validate

    return _validate(model, params, where=where, error=TaskConfigError)
