"""The defense contract: what a defense plugin may override, and the services it is handed.

A defense subclasses :class:`Defense` and overrides only the stages it acts at. Every hook is
optional; with none overridden the defense is ``none`` (plain full fine-tuning, no screening).

Rules (checked by the contract tests in ``tests/test_defense_contract.py`` for every registered defense):

* The constructor stores the config and nothing else. The runner builds a **fresh instance for
  every cell**, so nothing a defense learns (a threshold, a keyword list) reaches another cell.
* A defense never sees what a defender could not know: :meth:`Defense.select_train` receives rows
  with ``text``, ``label`` and ``row_id`` only (never the poison flags or the original labels), the
  context holds no target label, and the clean rows it offers are clean dev rows, never poisoned ones.
* A defense that overrides none of the training hooks (:meth:`select_train`, :meth:`add_train`,
  :meth:`prepare_model`, :meth:`backward`, :meth:`reference_size`) and has no ``learning_rate``/``epochs`` setting
  (a Config that inherits :class:`TrainingSchedule` has them) acts only after training: it gets the plain
  victim of its attack x dataset x backbone x seed, trained once and cached on disk, shared with every other
  post-training defense.

Stages:

* before training: :meth:`select_train` returns a keep-mask over the training rows (BKI, CUBE, ...);
  the runner computes the precision and recall of the removed rows against the true poison flags.
  :meth:`add_train` may add rows to what is kept: the defender's own clean rows (``ctx.clean(n)``,
  counted in the record), for the clean-data controls.
* during training: :meth:`reference_size` asks for clean reference rows (taken from the
  defender's clean rows), :meth:`prepare_model` chooses what trains, :meth:`backward` computes the
  gradients of one step. ``learning_rate`` / ``epochs`` in a Config (inherit :class:`TrainingSchedule`
  for them) override the profile's, and a
  ``parameter_efficient`` defense trains at the profile's ``adapter_learning_rate``.
* after training: :meth:`calibrate` fits thresholds or auxiliary parts on the calibration rows
  (``ctx.clean(n)``), then :meth:`predict` labels the test inputs; ``-1`` rejects an input (counted
  as a CACC error and as a failed attack). ``predict`` is called once on the clean and poisoned test
  inputs shuffled together, so it cannot tell which set it is looking at.

The model protocol. A model returned by :meth:`prepare_model` (and the one inside every
:class:`~bench.models.victim.Victim`) must, like a Hugging Face ``*ForSequenceClassification`` model:

* take ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer makes them)
  and optionally ``labels``, ``output_hidden_states=True`` or ``inputs_embeds`` instead of ``input_ids``;
* return an object with ``.logits`` of shape ``[batch, num_labels]``, ``.loss`` when labels were
  given, and ``.hidden_states`` (embeddings output, then one per layer) when asked;
* have ``config.num_labels``, ``config.model_type`` and ``get_input_embeddings()``;
* keep the same parameter names when built again by the same ``prepare_model`` on a fresh backbone
  (the victim cache saves the state dict and loads it into a model built that way).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import datasets
import numpy as np
import torch

from .config import ConfigError, NoConfig
from .errors import BenchError

if TYPE_CHECKING:  # pragma: no cover
    from .models.backbones import LoadedModel
    from .models.lm import CausalLMScorer
    from .models.victim import Victim

TRAINING_HOOKS = ("select_train", "add_train", "prepare_model", "backward", "reference_size")
# what a defense Config's TrainingSchedule notes say of None, unless the Config says otherwise
PROFILE_NOTE = " (or None for the profile's)"


class TrainingSchedule:
    """The ``learning_rate`` / ``epochs`` of a defense that trains its own schedule: None is the
    profile's (see :meth:`Defense.schedule`), and a Config with them acts in training.

    A Config inherits the two fields instead of declaring them, and its ``validate`` ends with
    :meth:`validate_schedule`::

        @dataclass(frozen=True)
        class LoraConfig(TrainingSchedule):
            r: int = 8
            ...

            def validate(self) -> None:
                ...
                self.validate_schedule("lora", note="")

    Not a dataclass itself: a dataclass base's fields would come *first*, and the field order is
    what the ``Valid settings:`` of an unknown key and a record's ``settings`` string
    (``lora.train_head=true; lora.learning_rate=0.5``) follow. So the two fields are appended to
    the end of each direct subclass's own (where every Config declared them before this base
    existed); a subclass of such a Config inherits them in place, like any dataclass field.
    """

    learning_rate: float | None = None
    epochs: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "__dataclass_fields__", {})}
        own = inspect.get_annotations(cls)
        extra = {k: v for k, v in inspect.get_annotations(TrainingSchedule).items()
                 if k not in own and k not in inherited}
        if extra:  # runs before the @dataclass decorator reads the annotations; the defaults are ours
            cls.__annotations__ = {**own, **extra}

    def validate_schedule(self, plugin: str, note: str = PROFILE_NOTE, epochs_note: str | None = None) -> None:
        """Reject a learning rate <= 0 and epochs < 1; the message names ``plugin`` and ends with ``note``
        (``epochs_note`` for the epochs, ``note`` when None): "lora.epochs=0: must be >= 1"."""
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"{plugin}.learning_rate={self.learning_rate}: must be > 0{note}")
        if self.epochs is not None and self.epochs < 1:
            tail = note if epochs_note is None else epochs_note
            raise ConfigError(f"{plugin}.epochs={self.epochs}: must be >= 1{tail}")


TRAINING_SETTINGS = tuple(inspect.get_annotations(TrainingSchedule))  # ("learning_rate", "epochs")


class CleanBudgetError(BenchError):
    """A defense asked for more clean rows than the profile's defender budget holds."""


@dataclass
class DefenseContext:
    """The services the runner hands every hook of one cell.

    ``selection``: the clean dev rows that select the model (the same rows for every defense).
    ``clean(n)``: the first ``n`` rows of the defender's clean rows (clean dev rows, disjoint from
    ``selection``; the same rows, in the same order, for every defense of a dataset x seed).
    """

    seed: int
    num_labels: int
    profile: Any
    device: torch.device
    selection: datasets.Dataset
    clean_pool: datasets.Dataset
    backbone_name: str = ""
    _backbone: Callable[[], "LoadedModel"] | None = None
    _fit: Callable[..., "Victim"] | None = None
    _plain_victim: Callable[[], "Victim"] | None = None
    _scorer: Callable[[str | None], "CausalLMScorer"] | None = None
    stats: dict = field(default_factory=dict)
    clean_used: int = 0

    # --- data --------------------------------------------------------------------------------
    def clean(self, n: int | None = None, strict: bool = True) -> datasets.Dataset:
        """The first ``n`` defender's clean rows (all of them when ``n`` is None); counted in the record.

        More than the budget holds is an error with ``strict`` (a reference set of a stated size), and
        gives the whole budget without it (calibration rows: "at most n")."""
        pool = len(self.clean_pool)
        n = pool if n is None else int(n)
        if n > pool and not strict:
            n = pool
        if n > pool:
            raise CleanBudgetError(
                f"the defense asks for {n} clean rows but the profile's defender budget is {pool} "
                f"(profile.clean_size); raise it with --set profile.clean_size={n}, or ask for fewer"
            )
        self.clean_used = max(self.clean_used, n)
        return self.clean_pool.select(range(n))

    # --- randomness --------------------------------------------------------------------------
    def _purpose_seed(self, purpose: str) -> list[int]:
        return [self.seed, int(hashlib.sha256(purpose.encode()).hexdigest()[:8], 16)]

    def rng(self, purpose: str) -> np.random.Generator:
        """A numpy generator seeded by the cell's seed and ``purpose`` (independent streams per purpose)."""
        return np.random.default_rng(np.random.SeedSequence(self._purpose_seed(purpose)))

    def torch_generator(self, purpose: str) -> torch.Generator:
        s = np.random.SeedSequence(self._purpose_seed(purpose)).generate_state(1)[0]
        return torch.Generator().manual_seed(int(s))

    # --- models ------------------------------------------------------------------------------
    def backbone(self) -> "LoadedModel":
        """A fresh, untrained copy of the cell's backbone (seeded with the cell's seed)."""
        if self._backbone is None:
            raise RuntimeError("no backbone service in this context")
        return self._backbone()

    def fit(self, texts: list[str], labels: list[int], purpose: str = "aux") -> "Victim":
        """Train an auxiliary classifier on ``texts``/``labels`` with the profile's settings (plain
        fine-tuning of the cell's backbone, model chosen on ``selection``); cached on disk by content."""
        if self._fit is None:
            raise RuntimeError("no trainer service in this context")
        return self._fit(list(texts), list(labels), purpose)

    def plain_victim(self) -> "Victim":
        """The victim of this cell's poisoned data trained without any defense (trained or loaded once)."""
        if self._plain_victim is None:
            raise RuntimeError("no plain victim in this context")
        return self._plain_victim()

    def scorer(self, name: str | None = None) -> "CausalLMScorer":
        """The process-wide causal-LM scorer (per-token log-probabilities, perplexity); ``name``
        defaults to the profile's ``scorer_lm``."""
        if self._scorer is None:
            raise RuntimeError("no scorer service in this context")
        return self._scorer(name)

    def log(self, **stats: Any) -> None:
        """JSON-able statistics that land in the record (``defense_stats``)."""
        self.stats.update(stats)


@dataclass
class StepState:
    """One optimisation step, as :meth:`Defense.backward` sees it."""

    model: Any
    batch: dict[str, torch.Tensor]
    epoch: int  # 0-based
    num_epochs: int
    step: int  # global step, 0-based
    # a fresh random clean batch, as (padded chunk, weight) pairs: the rows sorted by length and cut into
    # chunks (less padding); the weights (share of rows) sum to 1, so sum(w * chunk mean loss) is the
    # batch's mean loss
    reference_batch: Callable[[], list[tuple[dict[str, torch.Tensor], float]]] | None
    memory: dict  # kept across the steps of one training run; JSON-able stats go in memory["stats"]


class Defense:
    """Base class of defenses; its behaviour at every stage is plain full fine-tuning."""

    Config: type = NoConfig
    # True for parameter-efficient defenses: they train at the profile's adapter_learning_rate
    parameter_efficient: bool = False
    # part of every record key when not 1: bump it when a default resolved at run time (for example
    # "None: pick by backbone") changes meaning, so old records are not taken for new ones
    version: int = 1
    # settings this defense needs under a named profile, e.g. {"cpu": {"reference_size": 384}};
    # the user's --set overrides them
    profile_defaults: dict[str, dict[str, Any]] = {}
    # False for a defense that keeps no row of the poisoned training set (``select_train`` drops them all;
    # the clean-only control): its victim depends on the set's length only, so one trained victim serves
    # every attack on a dataset x seed (the runner checks the promise when it trains one)
    reads_training_rows: bool = True

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @property
    def name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__)

    @classmethod
    def acts_in_training(cls) -> bool:
        """Whether this defense changes how the victim is trained (else it gets the plain victim)."""
        overridden = any(getattr(cls, h) is not getattr(Defense, h) for h in TRAINING_HOOKS)
        fields = getattr(cls.Config, "__dataclass_fields__", {})
        return overridden or any(f in fields for f in TRAINING_SETTINGS)

    @classmethod
    def rejects(cls) -> bool:
        """Whether this defense's predict may reject inputs (shown with FRR in the leaderboard)."""
        return False

    # --- before training -------------------------------------------------------------------
    def select_train(self, rows: datasets.Dataset, ctx: DefenseContext) -> np.ndarray | None:
        """A boolean keep-mask over ``rows`` (columns text, label, row_id), or None to keep all."""
        return None

    def add_train(self, ctx: DefenseContext) -> datasets.Dataset | None:
        """Rows (columns text, label) trained on beside the kept training rows, or None. Only the
        defender's clean rows may be added (take them with ``ctx.clean(n)`` so the record counts them)."""
        return None

    # --- during training -------------------------------------------------------------------
    def reference_size(self, loaded: "LoadedModel") -> int:
        """How many of the defender's clean rows this defense takes as its reference set (0: none)."""
        return 0

    def prepare_model(self, loaded: "LoadedModel", ctx: DefenseContext) -> Any:
        """The model to train; parameters with ``requires_grad`` are the ones that train."""
        return loaded.model

    def backward(self, state: StepState) -> float:
        """Put the step's gradients in ``.grad`` and return the training loss."""
        loss = state.model(**state.batch).loss
        loss.backward()
        return float(loss.detach())

    # --- after training --------------------------------------------------------------------
    def calibrate(self, victim: "Victim", ctx: DefenseContext) -> None:
        """Fit what ``predict`` needs (thresholds, a trigger embedding) on ``ctx.clean(n)`` rows."""

    def predict(self, texts: list[str], victim: "Victim", ctx: DefenseContext) -> np.ndarray:
        """One label per text, in order; ``-1`` rejects the input."""
        return victim.predict(texts)

    # --- helpers ---------------------------------------------------------------------------
    def resolved_identity(self) -> dict:
        """What a setting resolves to on this machine when the Config cannot say it and it changes the
        result (``auto`` picking an optional package, say). Part of the record and victim keys when not
        empty, so the same command on a machine that resolves it otherwise never reuses these records."""
        return {}

    def schedule(self, settings: Any) -> tuple[float, int]:
        """(learning rate, epochs): the Config's ``learning_rate`` / ``epochs`` when set, else the
        profile's (its ``adapter_learning_rate`` for a parameter-efficient defense)."""
        lr = getattr(self.config, "learning_rate", None)
        if lr is None:
            lr = settings.adapter_learning_rate if self.parameter_efficient else settings.learning_rate
        epochs = getattr(self.config, "epochs", None)
        return float(lr), int(epochs if epochs is not None else settings.epochs)
