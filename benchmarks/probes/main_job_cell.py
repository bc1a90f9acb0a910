"""The probes' shared setup: a cell of the main job's setting, prepared, with its defense context.

A probe script in this folder imports it as ``from main_job_cell import MainJobCells`` (the folder is on
``sys.path`` when the script runs). It loads the dataset and builds the evaluator once; each ``cell``
call plans, poisons and splits one (attack, defense, seed) the way ``bench run --main`` does.
"""

from __future__ import annotations

from bench.engine.cell import Evaluator, prepare
from bench.engine.profiles import MAIN_JOB, get_profile
from bench.runner import DataCache, plan


class MainJobCells:
    def __init__(self, dataset: str = "sst2", backbone: str = "minilm"):
        self.dataset, self.backbone = dataset, backbone
        self.profile = get_profile(MAIN_JOB.profile, dict(MAIN_JOB.profile_settings))
        self.data = DataCache().get(dataset)
        self.evaluator = Evaluator()

    def cell(self, attack: str, defense: str, seed: int, settings: dict | None = None):
        """(cell, prepared data, defense context) of one main-job cell; ``settings`` as ``--set``."""
        cell = plan([self.dataset], [self.backbone], [attack], [defense], [seed], self.profile, settings)[0]
        prep = prepare(cell, self.data)
        return cell, prep, self.evaluator.context(cell, prep)

    def setting(self) -> dict:
        """What the probe's records state about the setting."""
        return {"dataset": self.dataset, "backbone": self.backbone, "profile": self.profile.name,
                **dict(MAIN_JOB.profile_settings)}
