"""The defense interface: a defense may act before, during and after training.

A defense plugin subclasses :class:`Defense` and overrides only the stages it acts at:

* before training: :meth:`Defense.filter_train` filters or rewrites the (poisoned) training data
  (BKI, CUBE, ...);
* during training: :meth:`Defense.prepare_model` chooses what trains (LoRA, an extra layer, frozen
  parts), :meth:`Defense.reference_size` asks for a clean reference set drawn from the dev split, and
  :meth:`Defense.backward` computes the gradients of one step (gradient alignment, ...);
  ``learning_rate`` / ``epochs`` in a defense's Config override the profile's, and a
  ``parameter_efficient`` defense trains at the profile's ``adapter_learning_rate``;
* after training: :meth:`Defense.predict` screens, corrects or rejects test inputs
  (ONION, STRIP, RAP, ...).

The default of every stage is plain full fine-tuning, which is exactly the ``none`` defense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import datasets
import numpy as np
import torch

from .backbones import LoadedModel
from .config import NoConfig

# predicts labels for a list of sentences with the trained model
Classifier = Callable[[list[str]], np.ndarray]


@dataclass
class DefenseContext:
    """What the runner tells a defense about the cell it runs in."""

    seed: int
    num_labels: int
    dev_clean: datasets.Dataset  # dev data for model selection (reference samples removed)
    reference: datasets.Dataset | None  # the clean reference samples, when the defense asked for them
    settings: Any  # the profile (epochs, batch size, lr, max length)


@dataclass
class StepState:
    """One optimisation step, as :meth:`Defense.backward` sees it."""

    model: Any
    batch: dict[str, torch.Tensor]
    epoch: int  # 0-based
    num_epochs: int
    step: int  # global step, 0-based
    reference_batch: Callable[[], dict[str, torch.Tensor]] | None  # a fresh random clean batch
    memory: dict  # kept across the steps of one training run; JSON-able stats go in memory["stats"]


class Defense:
    """Base class of defenses; its behaviour at every stage is plain full fine-tuning."""

    Config: type = NoConfig
    # True for parameter-efficient defenses: they train at the profile's adapter_learning_rate
    parameter_efficient: bool = False
    # part of every record key when not 1: bump it when a default resolved at run time (for example
    # "None: pick by backbone") changes meaning, so old records are not taken for new ones
    version: int = 1

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @property
    def name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__)

    # --- before training -------------------------------------------------------------------
    def filter_train(self, train: datasets.Dataset, ctx: DefenseContext) -> datasets.Dataset:
        return train

    # --- during training -------------------------------------------------------------------
    def reference_size(self, loaded: LoadedModel) -> int:
        """How many clean dev samples this defense takes as its reference set (0: none)."""
        return 0

    def prepare_model(self, loaded: LoadedModel, ctx: DefenseContext) -> Any:
        """The model to train; parameters with ``requires_grad`` are the ones that train."""
        return loaded.model

    def backward(self, state: StepState) -> float:
        """Put the step's gradients in ``.grad`` and return the training loss."""
        loss = state.model(**state.batch).loss
        loss.backward()
        return float(loss.detach())

    # --- after training --------------------------------------------------------------------
    def predict(self, texts: list[str], classify: Classifier, ctx: DefenseContext) -> np.ndarray:
        return classify(texts)

    # --- helpers ---------------------------------------------------------------------------
    def schedule(self, settings: Any) -> tuple[float, int]:
        """(learning rate, epochs): the Config's ``learning_rate`` / ``epochs`` when set, else the
        profile's (its ``adapter_learning_rate`` for a parameter-efficient defense)."""
        lr = getattr(self.config, "learning_rate", None)
        if lr is None:
            lr = settings.adapter_learning_rate if self.parameter_efficient else settings.learning_rate
        epochs = getattr(self.config, "epochs", None)
        return float(lr), int(epochs if epochs is not None else settings.epochs)
