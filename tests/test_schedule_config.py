"""Issue 26: defense Configs take ``learning_rate`` / ``epochs`` (and their checks) from one base,
:class:`bench.defense.TrainingSchedule`, and nothing a record or a victim key depends on moved.

The literals below were captured from the tree *before* the Configs inherited the base (each Config then
declared the two fields last); every value here must stay as it is. A Config's field order is what a
record's ``settings`` string and the "Valid settings" of an unknown key follow, so the order is checked,
not only the content (record and victim keys hash sorted JSON, so they depend on the content alone).
"""

import dataclasses
import random

import pytest

from bench import registry
from bench.config import ConfigError, build_config, changed_settings, parse_assignments
from bench.defense import TRAINING_SETTINGS, Defense, TrainingSchedule
from bench.engine.profiles import PROFILES, get_profile
from bench.reporting.results import config_key
from bench.runner import DefenseSpec, _default_config, _defense_identity, plan

# dataclasses.asdict(Config()) of every registered defense, in field order
DEFAULTS = {
    'adapter': {
        'bottleneck': 8, 'activation': 'gelu', 'init_std': 0.01, 'train_head': True, 'train_layer_norm': False,
        'learning_rate': None, 'epochs': None,
    },
    'badacts': {
        'n_calibration': 200, 'frr': 0.05, 'delta': 3.0, 'purify': 'flagged', 'intervals': 'optimized',
        'interval_lr': 0.01, 'interval_epochs': 50, 'interval_start': 'gaussian', 'interval_penalty': 0.1,
        'interval_penalty_step': 1.2, 'interval_keep_acc': 0.98, 'interval_min_acc': 0.97, 'interval_retries': 2,
        'layer_pattern': None,
    },
    'bki': {
        'top_k': 5, 'per_sentence': 5, 'min_rows': 5, 'norm': 'inf', 'layer': -1, 'max_row_share': 0.5,
        'min_score_ratio': 0.5,
    },
    'btu': {
        'rounds': ('pooled', 'pooled-again', 'full'), 'suspect_fraction': 0.0005, 'exposure_lr': None,
        'exposure_epochs': 1, 'pooled_batch_size': 256, 'unlearn': 'after',
    },
    'clean-only': {'n_clean': None, 'match_steps': True},
    'cube': {
        'reducer': 'auto', 'n_components': 2, 'pca_components': 20, 'umap_neighbors': 100, 'umap_min_dist': 0.0,
        'min_cluster_share': 0.01, 'min_samples': None, 'noise': 'keep', 'layer': -1,
    },
    # distill versions 2-4 (issue 25, declared in docs/tuning.md) added label_trust..token_alpha after label_weight
    'distill': {'n_clean': None, 'temperature': 1.0, 'label_weight': 0.0, 'label_trust': 'trim', 'z_bar': 3.0,
                'trim_alpha': 0.05, 'token_guard': True, 'token_ratio': 5.0, 'token_alpha': 0.01,
                'flag_top_class': True,  # version 5 (session 27): a new default, keyed apart by the version
                'top_class_if_no_words': True},  # version 6 (session 29), the same
    'dpoe': {
        'shallow_layers': None, 'poe_alpha': 1.0, 'temperature': 1.0, 'rdrop_alpha': 3.0, 'shallow_lr_ratio': 4.0,
        'learning_rate': None, 'epochs': None,
    },
    'ga': {
        'use_lora': False, 'lora_r': None, 'lora_alpha': None, 'lora_dropout': 0.0, 'use_mslr': False, 'scales': None,
        'mslr_rank': 1, 'mslr_alpha': None, 'decoder_head_hidden': 16, 'use_alignment': True, 'reference_size': None,
        'min_ref_grad_norm': 5e-07, 'min_ref_loss': None, 'max_raw_ratio': None, 'ga_epoch': None,
        'decoder_head_dropout': 0.1, 'refresh_every': 1, 'freeze_head': False, 'learning_rate': None, 'epochs': None,
    },
    'ga-lora': {
        'use_lora': True, 'lora_r': None, 'lora_alpha': None, 'lora_dropout': 0.0, 'use_mslr': False, 'scales': None,
        'mslr_rank': 1, 'mslr_alpha': None, 'decoder_head_hidden': 16, 'use_alignment': True, 'reference_size': None,
        'min_ref_grad_norm': 5e-07, 'min_ref_loss': None, 'max_raw_ratio': None, 'ga_epoch': None,
        'decoder_head_dropout': 0.1, 'refresh_every': 1, 'freeze_head': True, 'learning_rate': None, 'epochs': None,
    },
    'lora': {
        'r': 8, 'alpha': 32, 'dropout': 0.0, 'target_modules': None, 'train_head': False, 'learning_rate': None,
        'epochs': None,
    },
    'moderate-fitting': {
        'lora_r': 8, 'lora_alpha': 16, 'in_dim': 2, 'mid_dim': 2, 'train_head': True, 'lr_scale': 0.3,
        'epoch_scale': 0.5, 'learning_rate': None, 'epochs': None,
    },
    'mslr': {
        'use_lora': True, 'lora_r': None, 'lora_alpha': None, 'lora_dropout': 0.0, 'use_mslr': True, 'scales': None,
        'mslr_rank': 1, 'mslr_alpha': None, 'decoder_head_hidden': 16, 'use_alignment': False, 'reference_size': None,
        'min_ref_grad_norm': 5e-07, 'min_ref_loss': None, 'max_raw_ratio': None, 'ga_epoch': None,
        'decoder_head_dropout': 0.1, 'refresh_every': 1, 'freeze_head': True, 'learning_rate': None, 'epochs': None,
    },
    'musclelora': {
        'use_lora': True, 'lora_r': None, 'lora_alpha': None, 'lora_dropout': 0.0, 'use_mslr': True, 'scales': None,
        'mslr_rank': 1, 'mslr_alpha': None, 'decoder_head_hidden': 16, 'use_alignment': True, 'reference_size': None,
        'min_ref_grad_norm': 5e-07, 'min_ref_loss': None, 'max_raw_ratio': None, 'ga_epoch': None,
        'decoder_head_dropout': 0.1, 'refresh_every': 1, 'freeze_head': True, 'learning_rate': None, 'epochs': None,
    },
    'none': {},
    'none+clean': {'n_clean': None},
    'onion': {'mode': 'quantile', 'clean_word_removal': 0.05, 'threshold': 0.0, 'n_calibration': 200, 'scorer': None},
    'prefix': {'num_virtual_tokens': 8, 'init_std': 1.0, 'train_head': True, 'learning_rate': None, 'epochs': None},
    'rap': {
        'word': 'mb', 'protected_label': None, 'n_calibration': 200, 'prob_lower': 0.1, 'prob_upper': 0.3, 'scale': 1.0,
        'rap_lr': 0.1, 'rap_epochs': 20, 'accumulate_grad': True, 'frr': 0.05,
    },
    'strip': {'n_perturb': 20, 'replace_ratio': 0.25, 'frr': 0.05, 'n_calibration': 200},
    'zdefense': {'lambda_std': 10.0, 'max_ngram': 2, 'lowercase': True},
}

# the key of the defense's part of a cell config (name, config, version, resolved identity), under each
# profile's profile_defaults: what a record key and a victim key hash
KEYS = {
    'adapter': {'cpu': 'b5073d8c9dbda418', 'paper': 'b5073d8c9dbda418', 'smoke': 'b5073d8c9dbda418'},
    'dpoe': {'cpu': '01fabfa9dc3165f4', 'paper': '01fabfa9dc3165f4', 'smoke': '01fabfa9dc3165f4'},
    'ga': {'cpu': '1c986e910a6cf6c8', 'paper': '9f1c6cf729dfb521', 'smoke': '9f1c6cf729dfb521'},
    'ga-lora': {'cpu': '1f546da4a8fe1de7', 'paper': '6860d04f1ecf7069', 'smoke': '6860d04f1ecf7069'},
    'lora': {'cpu': '53f65a5500eef6dd', 'paper': '53f65a5500eef6dd', 'smoke': '53f65a5500eef6dd'},
    'moderate-fitting': {'cpu': '489e0a365568607f', 'paper': 'f12782dfa7cd3364', 'smoke': 'f12782dfa7cd3364'},
    'mslr': {'cpu': '038e849a6c2d623c', 'paper': '038e849a6c2d623c', 'smoke': '038e849a6c2d623c'},
    'musclelora': {'cpu': 'da082c99e2d0eb60', 'paper': '5bfd348577ae7054', 'smoke': '5bfd348577ae7054'},
    'prefix': {'cpu': 'dc917b6203768145', 'paper': 'acd518e66ed17e67', 'smoke': 'acd518e66ed17e67'},
}

SCHEDULED = ["adapter", "dpoe", "ga", "ga-lora", "lora", "moderate-fitting", "mslr", "musclelora", "prefix"]
ACTS_IN_TRAINING = ["adapter", "bki", "btu", "clean-only", "cube", "distill", "dpoe", "ga", "ga-lora", "lora",
                    "moderate-fitting", "mslr", "musclelora", "none+clean", "prefix", "zdefense"]


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_config_keeps_its_fields_values_and_order(name):
    cfg = registry.get("defense", name).Config()
    assert list(dataclasses.asdict(cfg).items()) == list(DEFAULTS[name].items())


@pytest.mark.parametrize("name", SCHEDULED)
def test_record_and_victim_keys_of_the_defense_are_unchanged(name):
    cls = registry.get("defense", name)
    assert issubclass(cls.Config, TrainingSchedule)
    got = {p: config_key(_defense_identity(DefenseSpec(cls, _default_config(cls, p)))) for p in sorted(PROFILES)}
    assert got == KEYS[name]


def test_config_key_hashes_content_not_field_order():
    config = {"defense": {"name": "lora", "config": DEFAULTS["lora"]}, "seed": 1}
    items = list(DEFAULTS["lora"].items())
    random.Random(0).shuffle(items)
    assert config_key({"seed": 1, "defense": {"config": dict(items), "name": "lora"}}) == config_key(config)


def test_which_defenses_act_in_training_is_unchanged():
    assert sorted(n for n in registry.names("defense") if registry.get("defense", n).acts_in_training()) == \
        sorted(set(ACTS_IN_TRAINING) & set(registry.names("defense")))
    assert TRAINING_SETTINGS == ("learning_rate", "epochs")


@pytest.mark.parametrize("item, message", [
    ("lora.learning_rate=-1", "lora.learning_rate=-1.0: must be > 0"),
    ("lora.learning_rate=0", "lora.learning_rate=0.0: must be > 0"),
    ("lora.epochs=0", "lora.epochs=0: must be >= 1"),
    ("adapter.learning_rate=-1", "adapter.learning_rate=-1.0: must be > 0 (or None for the profile's)"),
    ("adapter.epochs=0", "adapter.epochs=0: must be >= 1 (or None for the profile's)"),
    ("dpoe.learning_rate=0", "dpoe.learning_rate=0.0: must be > 0 (or None for the profile's)"),
    ("dpoe.epochs=0", "dpoe.epochs=0: must be >= 1 (or None for the profile's)"),
    ("prefix.learning_rate=-1", "prefix.learning_rate=-1.0: must be > 0 (or None for the profile's)"),
    ("prefix.epochs=0", "prefix.epochs=0: must be >= 1 (or None for the profile's)"),
    ("moderate-fitting.learning_rate=-1", "moderate-fitting.learning_rate=-1.0: must be > 0 (or None: lr_scale x "
                                          "the profile's adapter_learning_rate)"),
    ("moderate-fitting.epochs=0", "moderate-fitting.epochs=0: must be >= 1 (or None: epoch_scale x the profile's)"),
    ("lora.learnig_rate=1", "defense lora: unknown setting 'learnig_rate'. Did you mean 'learning_rate'? Valid "
                            "settings: r, alpha, dropout, target_modules, train_head, learning_rate, epochs"),
    ("moderate-fitting.learnig_rate=1", "defense moderate-fitting: unknown setting 'learnig_rate'. Did you mean "
                                        "'learning_rate'? Valid settings: lora_r, lora_alpha, in_dim, mid_dim, "
                                        "train_head, lr_scale, epoch_scale, learning_rate, epochs"),
])
def test_set_errors_keep_their_messages(item, message):
    settings = parse_assignments([item])
    (defense,) = settings
    with pytest.raises(ConfigError) as e:
        plan(["sst2"], ["tiny-bert"], ["badnets"], [defense], [1], get_profile("smoke"), settings)
    assert str(e.value) == message


@pytest.mark.parametrize("name, changed, settings", [
    ("lora", {"epochs": "2", "learning_rate": "0.5", "train_head": "true"},
     "lora.train_head=true; lora.learning_rate=0.5; lora.epochs=2"),
    ("adapter", {"epochs": "2", "learning_rate": "0.5", "train_head": "false"},
     "adapter.train_head=false; adapter.learning_rate=0.5; adapter.epochs=2"),
    ("dpoe", {"epochs": "2", "learning_rate": "0.5"}, "dpoe.learning_rate=0.5; dpoe.epochs=2"),
    ("prefix", {"epochs": "2", "learning_rate": "0.5", "train_head": "false"},
     "prefix.train_head=false; prefix.learning_rate=0.5; prefix.epochs=2"),
    ("moderate-fitting", {"epochs": "2", "learning_rate": "0.5", "train_head": "false"},
     "moderate-fitting.train_head=false; moderate-fitting.learning_rate=0.5; moderate-fitting.epochs=2"),
])
def test_settings_string_keeps_its_order(name, changed, settings):
    cls = registry.get("defense", name)
    assert "; ".join(changed_settings(name, build_config(cls.Config, changed, owner=name), cls.Config())) == settings


@pytest.mark.parametrize("name, set_, default", [
    ("lora", (0.5, 2), (0.001, 3)),
    ("adapter", (0.5, 2), (0.001, 3)),
    ("dpoe", (0.5, 2), (5e-05, 3)),  # full fine-tuning: the profile's learning_rate
    ("prefix", (0.5, 2), (0.001, 3)),
    ("moderate-fitting", (0.5, 2), (0.0003, 2)),  # its own scales of the profile's
])
def test_schedule_reads_the_inherited_fields(name, set_, default):
    cls = registry.get("defense", name)
    cfg = build_config(cls.Config, {"learning_rate": "0.5", "epochs": "2"}, owner=name)
    assert cls(cfg).schedule(PROFILES["cpu"]) == set_
    assert cls().schedule(PROFILES["cpu"]) == pytest.approx(default)


def test_the_base_appends_its_fields_and_subclasses_inherit_them_in_place():
    @dataclasses.dataclass(frozen=True)
    class Own(TrainingSchedule):
        a: int = 1

    @dataclasses.dataclass(frozen=True)
    class Sub(Own):
        b: int = 2
        a: int = 3

    @dataclasses.dataclass(frozen=True)
    class Redeclared(TrainingSchedule):
        epochs: int | None = 5
        a: int = 1

    assert [f.name for f in dataclasses.fields(Own)] == ["a", "learning_rate", "epochs"]
    assert [f.name for f in dataclasses.fields(Sub)] == ["a", "learning_rate", "epochs", "b"]
    assert [f.name for f in dataclasses.fields(Redeclared)] == ["epochs", "a", "learning_rate"]
    assert Redeclared().epochs == 5 and Own().epochs is None and Sub().a == 3
    cfg = build_config(Own, {"learning_rate": "0.5", "epochs": "2"})  # typed like declared fields
    assert (cfg.learning_rate, cfg.epochs) == (0.5, 2)
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config(Own, {"epochs": "two"}, owner="own")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3

    class Trains(Defense):
        Config = Own

    assert Trains.acts_in_training()


def test_validate_schedule_notes():
    @dataclasses.dataclass(frozen=True)
    class C(TrainingSchedule):
        pass

    with pytest.raises(ConfigError, match=r"^x\.learning_rate=0\.0: must be > 0 \(or None for the profile's\)$"):
        C(learning_rate=0.0).validate_schedule("x")
    with pytest.raises(ConfigError, match=r"^x\.epochs=0: must be >= 1$"):
        C(epochs=0).validate_schedule("x", note="")
    with pytest.raises(ConfigError, match=r"^x\.epochs=0: must be >= 1 \(e\)$"):
        C(epochs=0).validate_schedule("x", note=" (l)", epochs_note=" (e)")
    C(learning_rate=1e-5, epochs=1).validate_schedule("x")
