"""Paper presets: named bundles of settings that reproduce a paper's (or a toolkit's) attack and defense setup.

``bench run --preset NAME`` applies a preset's settings as if each were given with ``--set``; an explicit
``--set`` or ``--sweep`` of the same key wins, and a plugin the preset names that the run does not select
(-a/-d) is left out for that run. The record's row says which preset made it (``preset``); the record key
does not change: it hashes the resolved settings, so a preset run and the same cell given with the
equivalent ``--set`` values share one key. ``bench list`` shows the presets.

Each preset cites the paper and the code (repository, commit, file) its values were read from, and each
value carries its own source note. A knob of the paper that no plugin here has is written in ``notes``
("not settable here: ..."), never invented. ``reported`` holds a paper's own headline numbers where they
could be read from the paper itself; it stays empty where they could not be verified.

Only this module declares presets; no plugin imports it. :func:`check` builds every plugin's Config with a
preset's values (an unknown plugin or key fails there, and in the tests).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import ConfigError
from ..registry import UnknownNameError, suggest


@dataclass(frozen=True)
class Setting:
    """One value and where it was read (paper section, or repository file and what it says)."""

    value: Any
    source: str

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ConfigError(f"preset setting {self.value!r}: give its source")


@dataclass(frozen=True)
class Reported:
    """A paper's own headline numbers (fractions), read from the paper; ``metrics`` names them as the paper does."""

    dataset: str
    model: str
    attack: str
    metrics: Mapping[str, float]
    source: str


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # one line
    paper: str  # authors, title, venue, year
    code: str  # repository@commit and the files the values were read from
    settings: Mapping[str, Mapping[str, Setting]]  # plugin name (or "profile") -> key -> Setting
    notes: tuple[str, ...] = ()
    reported: tuple[Reported, ...] = ()

    def __post_init__(self) -> None:
        where = f"preset {self.name!r}"
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ConfigError(f"{where}: a preset name is one lowercase word")
        for what in ("description", "paper", "code"):
            text = getattr(self, what)
            if not text.strip() or "\n" in text:
                raise ConfigError(f"{where}: {what} must be one non-empty line")
        if not self.settings:
            raise ConfigError(f"{where}: no settings")
        for plugin, values in self.settings.items():
            if not values:
                raise ConfigError(f"{where}: {plugin} has no settings")
            for key, s in values.items():
                if not isinstance(s, Setting):
                    raise ConfigError(f"{where}: {plugin}.{key} must be a Setting(value, source)")

    def assignments(self) -> dict[str, dict[str, Any]]:
        """``{plugin: {key: value}}``: what the runner applies (values typed; build_config converts them)."""
        return {p: {k: s.value for k, s in values.items()} for p, values in self.settings.items()}

    def set_args(self) -> list[str]:
        """The preset as ``--set`` arguments (``PLUGIN.KEY=VALUE``): what it is equivalent to."""
        return [f"{p}.{k}={_text(s.value)}" for p, values in self.settings.items() for k, s in values.items()]


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def check(preset: Preset) -> None:
    """Build every named plugin's Config (and the profile) with the preset's values: an unknown plugin or
    key, or a value of the wrong type, raises ConfigError / UnknownNameError naming the preset."""
    from .. import registry
    from ..config import build_config
    from .profiles import PROFILES, Profile

    for plugin, values in preset.assignments().items():
        owner = f"preset {preset.name}: {plugin}"
        if plugin == "profile":
            build_config(Profile, {**dataclasses.asdict(PROFILES["cpu"]), **values}, owner=owner)
            continue
        kinds = [k for k in ("attack", "defense") if registry.has(k, plugin)]
        if not kinds:
            known = registry.names("attack") + registry.names("defense")
            raise UnknownNameError(f"{owner}: no attack or defense is named {plugin!r}.{suggest(plugin, known)}")
        build_config(registry.get(kinds[0], plugin).Config, values, owner=owner)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError(f"unknown preset {name!r}.{suggest(name, list(PRESETS))} Presets: {', '.join(PRESETS)} "
                               "(bench list shows them)")
    return PRESETS[name]


S = Setting

# --- shared readings -----------------------------------------------------------------------------------

OB = "thunlp/OpenBackdoor@1192ba3"
OB_TRIGGERS = ["cf", "mn", "bb", "tq"]
# OpenBackdoor's victim training in its shipped attack configs (configs/*_config.json, attacker.train)
OB_TRAIN = {
    "epochs": S(5, f"{OB} configs/badnets_config.json attacker.train.epochs 5"),
    "batch_size": S(32, f"{OB} configs/badnets_config.json attacker.train.batch_size 32"),
    "learning_rate": S(2e-5, f"{OB} configs/badnets_config.json attacker.train.lr 2e-5"),
    "weight_decay": S(0.0, f"{OB} configs/badnets_config.json attacker.train.weight_decay 0"),
    "warmup_ratio": S(0.6, f"{OB} openbackdoor/trainers/trainer.py: linear warm-up over warm_up_epochs (3) of the "
                           "5 epochs' steps"),
    "grad_clip": S(1.0, f"{OB} openbackdoor/trainers/trainer.py max_grad_norm default 1.0"),
    "max_length": S(512, f"{OB} configs/badnets_config.json victim.max_len 512"),
}
OB_BADNETS = {
    "triggers": S(OB_TRIGGERS, f"{OB} configs/badnets_config.json poisoner.triggers"),
    "num_triggers": S(1, f"{OB} configs/badnets_config.json poisoner.num_triggers 1 (one random trigger word "
                         "inserted per sentence)"),
    "poison_rate": S(0.1, f"{OB} configs/badnets_config.json poisoner.poison_rate"),
    "label_regime": S("clean-label", f"{OB} configs/badnets_config.json label_consistency true (only target-label "
                                     "rows poisoned)"),
}
OB_CUBE = {
    "pca_components": S(20, f"{OB} openbackdoor/trainers/trainer.py dimension_reduction pca_components 20"),
    "n_components": S(2, f"{OB} openbackdoor/trainers/trainer.py dimension_reduction umap_components 2"),
    "umap_neighbors": S(100, f"{OB} openbackdoor/trainers/trainer.py dimension_reduction n_neighbors 100"),
    "umap_min_dist": S(0.0, f"{OB} openbackdoor/defenders/cube_defender.py calls dimension_reduction(min_dist=0)"),
    "min_samples": S(100, f"{OB} openbackdoor/defenders/cube_defender.py HDBSCAN min_samples 100"),
    "min_cluster_share": S(0.0, f"{OB} openbackdoor/defenders/cube_defender.py leaves HDBSCAN's min_cluster_size "
                                "at 5; share 0 gives the plugin's floor of 5 rows"),
}
OB_NOTES = (
    "victim: bert-base-uncased in OpenBackdoor's configs (pass it with -b bert-base-uncased; a hub id).",
    "target_label 1 in OpenBackdoor's configs: SST-2's target here too; not set, so other datasets keep theirs.",
)

CUBE_PAPER = ("Ganqu Cui, Lifan Yuan, Bingxiang He, Yangyi Chen, Zhiyuan Liu, Maosong Sun. A Unified Evaluation of "
              "Textual Backdoor Learning: Frameworks and Benchmarks. NeurIPS 2022 (Datasets and Benchmarks)")

MSL = "ZrW00/MuScleLoRA@6b116ee"
MSL_CFG = f"{MSL} plmConfigs/Badnets4GA+LoRA+MSLRConfig.json"

# --- the presets ----------------------------------------------------------------------------------------

_ALL = [
    Preset(
        name="openbackdoor",
        description="OpenBackdoor's shipped defaults: BadNets/AddSent configs, victim training, defender defaults",
        paper=CUBE_PAPER,
        code=(f"{OB}: configs/badnets_config.json, configs/addsent_config.json, "
              "openbackdoor/defenders/{onion,strip,rap,bki,cube}_defender.py, openbackdoor/trainers/trainer.py"),
        settings={
            "badnets": OB_BADNETS,
            "addsent": {
                "sentence": S("I watch this 3D movie", f"{OB} configs/addsent_config.json poisoner.triggers"),
                "poison_rate": S(0.1, f"{OB} configs/addsent_config.json poisoner.poison_rate"),
                "label_regime": S("mixed", f"{OB} configs/addsent_config.json label_consistency false, label_dirty "
                                           "false (OpenBackdoor's 'mix': rows of any label, relabelled)"),
            },
            "onion": {
                "mode": S("fixed", f"{OB} openbackdoor/defenders/onion_defender.py: a fixed bar, no calibration"),
                "threshold": S(0.0, f"{OB} openbackdoor/defenders/onion_defender.py threshold default 0 (a word "
                                    "whose removal lowers the perplexity is removed)"),
                "scorer": S("gpt2", f"{OB} openbackdoor/defenders/onion_defender.py GPT2LM loads 'gpt2'"),
            },
            "strip": {
                "n_perturb": S(5, f"{OB} openbackdoor/defenders/strip_defender.py repeat default 5"),
                "replace_ratio": S(0.5, f"{OB} openbackdoor/defenders/strip_defender.py swap_ratio default 0.5"),
                "frr": S(0.01, f"{OB} openbackdoor/defenders/strip_defender.py frr default 0.01"),
            },
            "rap": {
                "word": S("cf", f"{OB} openbackdoor/defenders/rap_defender.py triggers default ['cf']"),
                "prob_lower": S(0.1, f"{OB} openbackdoor/defenders/rap_defender.py prob_range [-0.1, -0.3]"),
                "prob_upper": S(0.3, f"{OB} openbackdoor/defenders/rap_defender.py prob_range [-0.1, -0.3]"),
                "scale": S(1.0, f"{OB} openbackdoor/defenders/rap_defender.py scale default 1"),
                "rap_lr": S(1e-2, f"{OB} openbackdoor/defenders/rap_defender.py lr default 1e-2"),
                "rap_epochs": S(5, f"{OB} openbackdoor/defenders/rap_defender.py epochs default 5"),
                "frr": S(0.01, f"{OB} openbackdoor/defenders/rap_defender.py frr default 0.01"),
            },
            "bki": {
                "top_k": S(1, f"{OB} openbackdoor/defenders/bki_defender.py keeps one keyword (sorted_list[0])"),
                "per_sentence": S(5, f"{OB} openbackdoor/defenders/bki_defender.py: the 5 top words of a sentence"),
                "max_row_share": S(1.0, f"{OB} openbackdoor/defenders/bki_defender.py has no row-share guard"),
            },
            "cube": OB_CUBE,
            "profile": OB_TRAIN,
        },
        notes=OB_NOTES + (
            "rap.word 'cf' is also one of the BadNets triggers, as OpenBackdoor ships it (configs/rap_config.json "
            "attacks with cf/mn/bb/tq and perturbs with cf): RAP is then degenerate against badnets.",
            "not settable here: BKI's and CUBE's own auxiliary models (OpenBackdoor trains bert-base-uncased / "
            "roberta-base for 10 epochs); here both read the cell's plain victim.",
            "not settable here: CUBE's noise rule (OpenBackdoor drops a label's noise group unless it is the "
            "label's largest); BKI removes only rows with the keyword among their 5 most suspicious words.",
            "not settable here: dev_rate 0.1 (OpenBackdoor's dev split from train), STRIP/ONION batch sizes.",
        ),
    ),
    Preset(
        name="onion",
        description="ONION's setting: GPT-2-large scorer, a fixed bar; BadNets, one of five rare words, dirty label",
        paper=("Fanchao Qi, Yangyi Chen, Mukai Li, Yuan Yao, Zhiyuan Liu, Maosong Sun. ONION: A Simple and Effective "
               "Defense Against Textual Backdoor Attacks. EMNLP 2021"),
        code=("thunlp/ONION@0f4ae21: experiments/gptlm.py, experiments/test_defense.py, "
              "experiments/run_poison_bert.py, data/badnets/sst-2/*.tsv"),
        settings={
            "badnets": {
                "triggers": S(["cf", "mn", "bb", "tq", "mb"], "thunlp/ONION data/badnets/sst-2/test.tsv: the five rare "
                                                              "words found in the poisoned sentences"),
                "num_triggers": S(1, "thunlp/ONION data/badnets/sst-2/test.tsv: each of the 912 poisoned sentences "
                                     "holds exactly one"),
                "label_regime": S("dirty", "thunlp/ONION data/badnets/sst-2/train.tsv: all 69 triggered rows are "
                                           "label-0 rows of data/clean_data relabelled 1"),
            },
            "onion": {
                "scorer": S("gpt2-large", "thunlp/ONION experiments/gptlm.py loads gpt2-large"),
                "mode": S("fixed", "thunlp/ONION experiments/test_defense.py: a fixed bar on the suspicion score"),
                "threshold": S(0.0, f"{OB} openbackdoor/defenders/onion_defender.py threshold 0 (the authors' group's "
                                    "port); thunlp/ONION sweeps bars 1..100 in this sign"),
            },
            "profile": {
                "epochs": S(13, "thunlp/ONION experiments/run_poison_bert.py: warmup_epochs 3 + epoch 10 epochs run"),
                "warmup_ratio": S(0.2308, "thunlp/ONION experiments/run_poison_bert.py: warm-up over 3 of 13 epochs"),
                "batch_size": S(32, "thunlp/ONION experiments/run_poison_bert.py --batch_size default 32"),
                "learning_rate": S(2e-5, "thunlp/ONION README.md / run_poison_bert.py --lr 2e-5"),
                "weight_decay": S(0.0, "thunlp/ONION experiments/run_poison_bert.py --weight_decay default 0"),
            },
        },
        notes=(
            "threshold: the value the paper's tables use could not be read from the paper; 0 is OpenBackdoor's "
            "port, and thunlp/ONION test_defense.py reports every bar from 1 to 100.",
            "poison_rate not set: the README says 5 %, the released SST-2 training file holds 69 triggered rows of "
            "6920 (1 %).",
            "victim: bert-base-uncased (run_poison_bert.py); target label 1 (SST-2's here).",
        ),
    ),
    Preset(
        name="rap",
        description="RAP's construction setting: probability drop 0.1-0.3, lambda 1, lr 1e-2 x 5 epochs, FRR 1 %",
        paper=("Wenkai Yang, Yankai Lin, Peng Li, Jie Zhou, Xu Sun. RAP: Robustness-Aware Perturbations for Defending "
               "against Backdoor Attacks on NLP Models. EMNLP 2021"),
        code="lancopku/RAP@fcf4d7e: run_rap.sh, rap_defense.py, evaluate_rap_performance.py",
        settings={
            "rap": {
                "prob_lower": S(0.1, "lancopku/RAP run_rap.sh --probability_range '-0.1 -0.3'"),
                "prob_upper": S(0.3, "lancopku/RAP run_rap.sh --probability_range '-0.1 -0.3'"),
                "scale": S(1.0, "lancopku/RAP run_rap.sh --scale_factor 1"),
                "rap_lr": S(1e-2, "lancopku/RAP run_rap.sh --lr 1e-2"),
                "rap_epochs": S(5, "lancopku/RAP run_rap.sh --epochs 5"),
                "protected_label": S(1, "lancopku/RAP run_rap.sh --protect_label 1"),
                "frr": S(0.01, "lancopku/RAP evaluate_rap_performance.py reports FRRs 0.5, 1, 3, 5 % on clean "
                               "held-out rows; 1 % (also OpenBackdoor's RAP default)"),
            },
        },
        notes=(
            "rap.word not set: the authors' example perturbs with 'cf', one of this benchmark's BadNets triggers; "
            "the plugin's 'mb' stays (MuScleLoRA's RAP baseline config uses mb for the same attack).",
            "not settable here: the construction batch size (32); the authors construct on a whole held-out dev "
            "set, here n_calibration rows.",
        ),
    ),
    Preset(
        name="strip",
        description="STRIP-ViTA's text operating point: the threshold set for a 3 % false rejection rate",
        paper=("Yansong Gao, Yeonjae Kim, Bao Gia Doan, Zhi Zhang, Gongxuan Zhang, Surya Nepal, Damith C. Ranasinghe, "
               "Hyoungshick Kim. Design and Evaluation of a Multi-Domain Trojan Detection Method on Deep Neural "
               "Networks (STRIP-ViTA). IEEE TDSC 19(4), 2022 (arXiv:1911.10312)"),
        code="lancopku/RAP@fcf4d7e: strip_vita.py (RAP's re-implementation; no authors' text code found)",
        settings={
            "strip": {
                "frr": S(0.03, "STRIP-ViTA abstract: 'By setting FRR to be 3%' for text and audio tasks"),
                "n_perturb": S(20, "lancopku/RAP strip_vita.py --perturbation_number default 20"),
            },
        },
        notes=(
            "replace_ratio not set: not read from the paper; RAP's strip_vita.py defaults to 0.7 and its README "
            "example uses 0.05, OpenBackdoor's port 0.5.",
        ),
        reported=(
            Reported(dataset="IMDB and consumer complaints (average)", model="LSTM and 1D CNN",
                     attack="word/phrase trojan trigger", metrics={"frr": 0.03, "far": 0.011},
                     source="STRIP-ViTA abstract (arXiv:1911.10312): FRR 3 % gives an average FAR of 1.1 % on text"),
        ),
    ),
    Preset(
        name="bki",
        description="BKI as OpenBackdoor ports it: one backdoor keyword from each sentence's 5 most suspicious words",
        paper=("Chuanshuai Chen, Jiazhu Dai. Mitigating backdoor attacks in LSTM-based text classification systems by "
               "Backdoor Keyword Identification. Neurocomputing 2021 (arXiv:2007.12070)"),
        code=f"{OB}: openbackdoor/defenders/bki_defender.py, configs/bki_config.json",
        settings={
            "bki": {
                "top_k": S(1, f"{OB} openbackdoor/defenders/bki_defender.py keeps one keyword (sorted_list[0])"),
                "per_sentence": S(5, f"{OB} openbackdoor/defenders/bki_defender.py: the 5 top words of a sentence"),
                "max_row_share": S(1.0, f"{OB} openbackdoor/defenders/bki_defender.py has no row-share guard"),
            },
            "badnets": OB_BADNETS,
            "profile": OB_TRAIN,
        },
        notes=OB_NOTES + (
            "no authors' code found; the values are the OpenBackdoor port's, not read from the paper (an LSTM paper).",
            "not settable here: the port removes only rows with the keyword among their 5 most suspicious words, "
            "and trains its own bert-base-uncased for 10 epochs as the auxiliary model (here: the plain victim).",
        ),
    ),
    Preset(
        name="cube",
        description="CUBE as OpenBackdoor ships it: PCA 20 + UMAP 2-d (100 neighbours), HDBSCAN min_samples 100",
        paper=CUBE_PAPER,
        code=(f"{OB}: openbackdoor/defenders/cube_defender.py, openbackdoor/trainers/trainer.py, "
              "configs/cube_config.json"),
        settings={"cube": OB_CUBE, "badnets": OB_BADNETS, "profile": OB_TRAIN},
        notes=OB_NOTES + (
            "not settable here: CUBE's representation model (configs/cube_config.json: roberta-base, 10 epochs, lr "
            "2e-5); here the cell's plain victim.",
            "not settable here: the noise rule (OpenBackdoor drops a label's noise group unless it is the label's "
            "largest); cube.reducer is left at auto (UMAP when umap-learn is installed).",
        ),
    ),
    Preset(
        name="zdefense",
        description="Z-defence's released filter: unigram z-scores, outliers beyond mean + 20 std, case kept",
        paper=("Xuanli He, Qiongkai Xu, Jun Wang, Benjamin Rubinstein, Trevor Cohn. Mitigating Backdoor Poisoning "
               "Attacks through the Lens of Spurious Correlation. EMNLP 2023"),
        code="xlhex/emnlp2023_z-defence@4e28e2a: z_filtering.py",
        settings={
            "zdefense": {
                "lambda_std": S(20.0, "xlhex/emnlp2023_z-defence z_filtering.py: pos_bound = mean + std * 20"),
                "max_ngram": S(1, "xlhex/emnlp2023_z-defence z_filtering.py: only unigram outliers filter rows (the "
                                  "bigram scores are computed, unused)"),
                "lowercase": S(False, "xlhex/emnlp2023_z-defence z_filtering.py splits the sentence as it is"),
            },
        },
        notes=(
            "the script's mean and std are over the (unigram, label) pairs that occur, with a uniform label prior "
            "and occurrence counts; the plugin's over every pair with document counts and the label's share: "
            "20 std is not the same cut in the two (not settable here).",
            "not settable here: the paper's syntactic-template features (no constituency parser offline).",
        ),
    ),
    Preset(
        name="badacts",
        description="BadActs' detect-then-purify script: delta 3, FRR 20 %, intervals lr 0.01 x 50; dirty BadNets 20 %",
        paper=("Yi et al. BadActs: A Universal Backdoor Defense in the Activation Space. Findings of ACL 2024 "
               "(arXiv:2405.11227)"),
        code=("clearloveclearlove/BadActs@7932f19: BadActs_detection_then_purification.py, BadActs_purification.py, "
              "openbackdoor/defenders/badacts_defender.py, Attacks.py, configs/badnets_config.json"),
        settings={
            "badacts": {
                "delta": S(3.0, "clearloveclearlove/BadActs BadActs_detection_then_purification.py delta = 3"),
                "frr": S(0.2, "clearloveclearlove/BadActs BadActs_detection_then_purification.py frr_tmp = 0.2 (the "
                              "defender class default is 0.05)"),
                "purify": S("flagged", "clearloveclearlove/BadActs BadActs_detection_then_purification.py: clamped "
                                       "forward only for flagged inputs"),
                "intervals": S("optimized", "clearloveclearlove/BadActs BadActs_purification.py learns the bounds"),
                "interval_start": S("authors", "clearloveclearlove/BadActs BadActs_purification.py: up_bound and "
                                               "margin start at ones, i.e. [1 - e, 1] for every neuron"),
                "interval_lr": S(0.01, "clearloveclearlove/BadActs BadActs_purification.py Adam lr 0.01"),
                "interval_epochs": S(50, "clearloveclearlove/BadActs BadActs_purification.py range(50)"),
                "interval_penalty": S(0.1, "clearloveclearlove/BadActs BadActs_purification.py c = 0.1"),
                "interval_penalty_step": S(1.2, "clearloveclearlove/BadActs BadActs_purification.py a = 1.2"),
                "interval_keep_acc": S(0.98, "clearloveclearlove/BadActs BadActs_purification.py: c rises while "
                                             "accuracy >= 0.98 x dev_acc"),
                "interval_min_acc": S(0.97, "clearloveclearlove/BadActs BadActs_purification.py: refit with c/2 "
                                            "while dev accuracy < 97"),
            },
            "badnets": {
                "triggers": S(OB_TRIGGERS, "clearloveclearlove/BadActs configs/badnets_config.json poisoner.triggers"),
                "num_triggers": S(1, "clearloveclearlove/BadActs configs/badnets_config.json num_triggers 1"),
                "poison_rate": S(0.2, "clearloveclearlove/BadActs Attacks.py poison_rate = 0.2"),
                "label_regime": S("dirty", "clearloveclearlove/BadActs configs/badnets_config.json label_dirty true"),
            },
            "profile": {
                "epochs": S(5, "clearloveclearlove/BadActs Attacks.py epochs = 5"),
                "batch_size": S(32, "clearloveclearlove/BadActs Attacks.py batch_size = 32 (SST-2)"),
                "learning_rate": S(2e-5, "clearloveclearlove/BadActs configs/badnets_config.json lr 2e-5"),
                "warmup_ratio": S(0.6, "clearloveclearlove/BadActs configs/badnets_config.json warm_up_epochs 3 of 5"),
            },
        },
        notes=(
            "the authors' detection-only script (BadActs_detection.py) keeps the class default frr 0.05.",
            "not settable here: the penalty schedule's timing (c changes every 5 epochs after the 10th) and "
            "the retry without a bound; victim bert-base-uncased.",
        ),
    ),
    Preset(
        name="dpoe",
        description="DPoE's training script: PoE alpha 1, T 1, R-Drop 3, shallow lr 4x, lr 2e-5, 3 epochs, batch 16",
        paper=("Qin Liu, Fei Wang, Chaowei Xiao, Muhao Chen. From Shortcuts to Triggers: Backdoor Defense with "
               "Denoised PoE. NAACL 2024"),
        code="luka-group/DPoE@79d790a: run_train.sh, train_w_dpoe.py",
        settings={
            "dpoe": {
                "poe_alpha": S(1.0, "luka-group/DPoE run_train.sh --poe_alpha 1.0"),
                "temperature": S(1.0, "luka-group/DPoE run_train.sh --temperature 1.0"),
                "rdrop_alpha": S(3.0, "luka-group/DPoE run_train.sh --rdrop_alpha 3.0"),
                "shallow_lr_ratio": S(4.0, "luka-group/DPoE run_train.sh --small_lr 8e-5 against --lr 2e-5"),
                "learning_rate": S(2e-5, "luka-group/DPoE run_train.sh --lr 2e-5"),
                "epochs": S(3, "luka-group/DPoE run_train.sh --epoch 3"),
            },
            "profile": {
                "batch_size": S(16, "luka-group/DPoE run_train.sh --batch_size 16"),
                "warmup_ratio": S(0.1, "luka-group/DPoE train_w_dpoe.py --warmup_ratio default 0.1"),
                "weight_decay": S(0.01, "luka-group/DPoE train_w_dpoe.py --weight_decay default 1e-2"),
            },
        },
        notes=(
            "dpoe.shallow_layers left at None: 3 of BERT-base's 12 layers (train_w_dpoe.py default; run_train.sh "
            "sweeps 2-5), scaled to other depths by the plugin.",
            "run_train.sh: AG News with AddSent on bert-base-uncased (pass --dataset agnews -a addsent); the poisoned "
            "files come from OpenBackdoor and their poison rate is not stated: not set.",
            "their weight decay spares biases and LayerNorm weights (not settable here).",
        ),
    ),
    Preset(
        name="btu",
        description="BTU's config.json: BadNets 'cf' once, 10 % of each label relabelled; 1 epoch, batch 64, lr 2e-5",
        paper=("Peihai Jiang, Xixiang Lyu, Yige Li, Jing Ma. Backdoor Token Unlearning: Exposing and Defending "
               "Backdoors in Pretrained Language Models. AAAI 2025"),
        code="XDJPH/Backdoor-Token-Unlearning@7a63ece: config.json, BTU.py",
        settings={
            "btu": {
                "suspect_fraction": S(0.0005, "XDJPH/Backdoor-Token-Unlearning config.json threshold 0.0005"),
                "exposure_lr": S(2e-5, "XDJPH/Backdoor-Token-Unlearning config.json lr 2e-5"),
            },
            "badnets": {
                "triggers": S(["cf"], "XDJPH/Backdoor-Token-Unlearning config.json trigger 'cf'"),
                "num_triggers": S(1, "XDJPH/Backdoor-Token-Unlearning BTU.py inserts the trigger once"),
                "poison_rate": S(0.1, "XDJPH/Backdoor-Token-Unlearning config.json poison-ratio 0.1"),
                "label_regime": S("mixed", "XDJPH/Backdoor-Token-Unlearning config.json mode 'mix': 10 % of each "
                                           "label's rows, relabelled to the target"),
            },
            "profile": {
                "epochs": S(1, "XDJPH/Backdoor-Token-Unlearning config.json epochs 1"),
                "batch_size": S(64, "XDJPH/Backdoor-Token-Unlearning BTU.py BATCH_SIZE_TRAIN 64 for SST-2"),
                "learning_rate": S(2e-5, "XDJPH/Backdoor-Token-Unlearning BTU.py lr 2e-5"),
            },
        },
        notes=(
            "not settable here: the final epoch of fine-tuning on clean held-out rows after the unlearning; victim "
            "bert-base-uncased on SST-2 (target label 1).",
        ),
    ),
    Preset(
        name="moderate-fitting",
        description="Moderate-fitting's released LoRA config: r 8, 2-wide reparameterisation, lr 3e-4, 10 epochs",
        paper=("Zhu et al. Moderate-fitting as a Natural Backdoor Defender for Pre-trained Language Models. "
               "NeurIPS 2022"),
        code=("thunlp/Moderate-fitting@c12fb72: examples/examples_text-classification/configs/"
              "lora_roberta-base-sst2-badnet-5/sst2_mid2.json, opendelta/delta_models/lora.py"),
        settings={
            "moderate-fitting": {
                "lora_r": S(8, "thunlp/Moderate-fitting sst2_mid2.json lora_r 8"),
                "lora_alpha": S(16, "thunlp/Moderate-fitting opendelta/delta_models/lora.py lora_alpha default 16"),
                "in_dim": S(2, "thunlp/Moderate-fitting sst2_mid2.json in_dim 2"),
                "mid_dim": S(2, "thunlp/Moderate-fitting sst2_mid2.json mid_dim 2"),
                "learning_rate": S(3e-4, "thunlp/Moderate-fitting sst2_mid2.json learning_rate 0.0003"),
                "epochs": S(10, "thunlp/Moderate-fitting sst2_mid2.json num_train_epochs 10"),
            },
            "profile": {
                "batch_size": S(32, "thunlp/Moderate-fitting sst2_mid2.json per_device_train_batch_size 32"),
                "max_length": S(128, "thunlp/Moderate-fitting sst2_mid2.json max_source_length 128"),
                "warmup_ratio": S(0.0, "thunlp/Moderate-fitting sst2_mid2.json warmup_steps 0"),
            },
        },
        notes=(
            "the released config is roberta-base on SST-2 BadNets ('badnet-5'); its trigger words and poison rate "
            "are in data files not in the repository: the attack is not set.",
            "not settable here: the authors also generate the classification head through the reparameterisation "
            "network (here it trains directly); evaluation every 200 steps.",
        ),
    ),
    Preset(
        name="musclelora",
        description="MuScleLoRA's encoder (PLM) configs: LoRA r 8 / alpha 32, MSLR alpha 6, 96 reference rows, lr 2e-5",
        paper=("Zongru Wu, Zhuosheng Zhang, Pengzhou Cheng, Gongshen Liu. Acquiring Clean Language Models from "
               "Backdoor Poisoned Datasets by Downscaling Frequency Space. ACL 2024"),
        code=(f"{MSL}: plmConfigs/Badnets4GA+LoRA+MSLRConfig.json, plmConfigs/Badnets4OnlyLoRAConfig.json, "
              "plmConfigs/AddsentsGA+LoRA+MSLRConfig.json, plmDefense.py"),
        settings={
            "musclelora": {
                "lora_r": S(8, f"{MSL_CFG} loraConfig.r 8"),
                "lora_alpha": S(32, f"{MSL_CFG} loraConfig.lora_alpha 32"),
                "lora_dropout": S(0.0, f"{MSL_CFG} loraConfig.lora_dropout 0"),
                "mslr_rank": S(1, f"{MSL_CFG} mslrConfig.inner_rank 1"),
                "mslr_alpha": S(6.0, f"{MSL_CFG} mslrConfig.mslrAlpha 6"),
                "reference_size": S(96, f"{MSL_CFG} train.refSample 96"),
                "ga_epoch": S(1, f"{MSL_CFG} train.GAEpoch 1"),
                "max_raw_ratio": S(0.1, f"{MSL_CFG} train.maxRawGradRatio 0.1"),
                "min_ref_grad_norm": S(5e-7, f"{MSL_CFG} train.minRefGradNorm 5e-7"),
                "min_ref_loss": S(0.4, f"{MSL_CFG} train.minRefLoss 0.4"),
                "learning_rate": S(2e-5, f"{MSL_CFG} train.lr 2e-5"),
            },
            "lora": {
                "r": S(8, f"{MSL} plmConfigs/Badnets4OnlyLoRAConfig.json loraConfig.r 8"),
                "alpha": S(32, f"{MSL} plmConfigs/Badnets4OnlyLoRAConfig.json loraConfig.lora_alpha 32"),
                "dropout": S(0.0, f"{MSL} plmConfigs/Badnets4OnlyLoRAConfig.json loraConfig.lora_dropout 0"),
                "learning_rate": S(2e-5, f"{MSL} plmConfigs/Badnets4OnlyLoRAConfig.json train.lr 2e-5"),
            },
            "badnets": {
                "triggers": S(OB_TRIGGERS, f"{MSL_CFG} poisoner.triggers"),
                "num_triggers": S(4, f"{MSL_CFG} poisoner.num_triggers 4"),
                "poison_rate": S(0.1, f"{MSL} plm.sh poison_rate default 0.1"),
                "label_regime": S("clean-label", f"{MSL_CFG} label_consistency true"),
            },
            "addsent": {
                "sentence": S("I watch this 3D movie", f"{MSL} plmConfigs/AddsentsGA+LoRA+MSLRConfig.json triggers"),
                "poison_rate": S(0.1, f"{MSL} plm.sh poison_rate default 0.1"),
                "label_regime": S("mixed", f"{MSL} plmConfigs/AddsentsGA+LoRA+MSLRConfig.json label_consistency "
                                           "false, label_dirty false"),
            },
            "profile": {
                "epochs": S(10, f"{MSL_CFG} train.epochs 10"),
                "batch_size": S(32, f"{MSL_CFG} train.batch_size 32"),
                "learning_rate": S(2e-5, f"{MSL} plmConfigs/Badnets4NoDefense.json train.lr 2e-5"),
                "warmup_ratio": S(0.0, f"{MSL_CFG} train.warm_up_epochs 0"),
                "weight_decay": S(0.0, f"{MSL_CFG} train.weight_decay 0"),
                "grad_clip": S(1.0, f"{MSL_CFG} train.max_grad_norm 1.0"),
                "max_length": S(512, f"{MSL_CFG} victim.max_len 512"),
            },
        },
        notes=(
            "musclelora.scales left at None: plmDefense.py picks the scale list per model (bert [1,4,...,28], "
            "roberta [1,2,4,...,16], large [1..9]), as the plugin does.",
            "the full training set and the paper's datasets: add --profile paper; the decoder-LLM configs "
            "(llmConfigs/) differ and are not this preset; the ablations ga, mslr, ga-lora take the same keys (--set).",
        ),
    ),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}
if len(PRESETS) != len(_ALL):
    raise ConfigError("two presets share a name")
