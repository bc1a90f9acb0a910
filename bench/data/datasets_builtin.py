"""The benchmark datasets: folders of CSVs under the benchmark data folder."""

from __future__ import annotations

from pathlib import Path

from ..registry import register
from . import TextDataset, load_csv_folder


class BenchmarkCSV:
    """Base for a dataset stored as ``<data_dir>/<folder>/{train,dev,test}.csv``."""

    folder: str = ""
    num_labels: int = 2
    default_target: int = 1

    def load(self, data_dir: Path) -> TextDataset:
        return load_csv_folder(
            Path(data_dir) / self.folder, name=self.folder, num_labels=self.num_labels,
            default_target=self.default_target,
        )


@register("dataset", "sst2")
class SST2(BenchmarkCSV):
    """SST-2 sentiment, 2 classes (0 negative, 1 positive); target label 1."""

    folder = "sst2"


@register("dataset", "hsol")
class HSOL(BenchmarkCSV):
    """HSOL hate speech / offensive language, 2 classes (0 clean, 1 hateful); target label 1."""

    folder = "hsol"


@register("dataset", "agnews")
class AGNews(BenchmarkCSV):
    """AG News topic, 4 classes (World, Sports, Business, Sci/Tech); target label 0."""

    folder = "agnews"
    num_labels = 4
    default_target = 0
