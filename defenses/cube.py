"""CUBE (Cui et al., NeurIPS 2022 D&B): cluster the poisoned model's representations, keep each label's main cluster.

"A Unified Evaluation of Textual Backdoor Learning: Frameworks and Benchmarks" proposes CUBE
(clustering-based unsupervised backdoor elimination) as its baseline defence. A model fitted on a
poisoned training set has to learn a separate rule for the poisoned rows (the trigger says "target"
whatever the rest of the sentence says), and in its representation space those rows tend to gather
in a cluster of their own, apart from the clean rows of the label they carry. CUBE therefore

1. represents every training row with a model trained on the poisoned set: here
   ``ctx.plain_victim()``, the pooled last-layer hidden state (``Victim.hidden_states``: the first
   token of an encoder, the last real token of a decoder) that the classification head reads;
2. reduces the dimension: UMAP to ``n_components`` (2) dimensions after a PCA to
   ``pca_components`` (20), with ``umap_neighbors`` 100 and ``umap_min_dist`` 0 (tight clusters for
   density clustering; the values of OpenBackdoor's port; numba compiles UMAP on its first use in a
   process, about a minute on a 2-core CPU); or, without the optional ``umap-learn`` package, a PCA straight to
   ``n_components`` dimensions. ``reducer=auto`` (default) takes UMAP when ``umap-learn`` can be
   imported and PCA otherwise, and ``ctx.log`` records which ran (``reducer_used``);
3. clusters all rows together with HDBSCAN (``sklearn.cluster.HDBSCAN``): ``min_cluster_size`` is
   ``min_cluster_share`` (1 %) of the training rows (at least 5), ``min_samples`` HDBSCAN's default
   (= ``min_cluster_size``) unless set;
4. for every label, keeps the rows of that label lying in the cluster that holds most of them, and
   removes the label's rows that lie in any other cluster.

Noise points (HDBSCAN's ``-1``: rows in no dense region) are **kept** by default (``noise=keep``): a
planted trigger makes its rows similar to one another, so a poisoned group large enough to matter
is dense and lands in a cluster, while the noise points are mostly unusual clean rows (hard,
ambiguous or mislabelled sentences) whose removal would cost clean accuracy. ``noise=drop`` removes
them too (OpenBackdoor drops the noise group of a label whenever it is not the label's largest
group). A label none of whose rows fall in a cluster keeps all its rows.

Why CUBE can leave the attack standing (OpenBackdoor issue #26: "ASR stays at 0.7" with CUBE on
SST-2; the thread has only the user's screenshots and no diagnosis). From its configuration and the
method:

* OpenBackdoor's shipped CUBE configuration (``configs/cube_config.json``; the issue's own settings
  are only in its screenshots) attacks with clean-label BadNets (``label_consistency: true``):
  the poisoned rows already carry the target label and read like target rows, so the poisoned model
  does not need a separate rule for them; their representations sit inside the clean target
  cluster, and a label-wise largest-cluster rule cannot tell them apart. The same holds for the
  share of a ``mixed`` poison that was already of the target label. Here the BadNets default is
  clean-label too: CUBE is expected to remove little of it.
* The separation exists only in a model that has learnt the backdoor *as a separate rule*. A model
  fine-tuned until its representations collapse onto one point per predicted label (many epochs,
  as the 10-epoch encoder of OpenBackdoor's CUBE) maps triggered rows onto the target point as
  well; an under-trained one has not yet separated anything. Here the representations come from the
  plain victim (on the CPU profile: 3 epochs, the epoch with the best clean dev accuracy).
* Density-clustering settings: OpenBackdoor runs HDBSCAN with ``min_samples=100`` (and the default
  ``min_cluster_size=5``) on a 2-d UMAP; a large ``min_samples`` turns small or loose groups into
  noise (which it then treats as one group per label), and a large ``min_cluster_size`` merges a
  small poisoned group into its neighbour. A poisoned group smaller than ``min_cluster_size`` can
  never be a cluster of its own.
* Backdoors are learnt from few rows: removing even 80 % of the poisoned rows can leave enough
  (tens of rows) to keep a high attack success rate, so a partial split of the poison shows up as
  little ASR change.

Differences from the paper and from OpenBackdoor's port: the representations come from the cell's
plain victim (the benchmark's shared model trained on the poisoned set with the profile's settings)
instead of a separately trained RoBERTa-base; ``min_cluster_size`` scales with the training set;
noise is kept by default; PCA is available as a fallback reducer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import time
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np

from bench.config import ConfigError
from bench.defense import Defense, DefenseContext
from bench.registry import register


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


@dataclass(frozen=True)
class CubeConfig:
    reducer: Literal["auto", "umap", "pca"] = "auto"  # auto: umap when umap-learn is installed, else pca
    n_components: int = 2  # dimensions the rows are clustered in
    pca_components: int = 20  # umap only: PCA to this many dimensions first
    umap_neighbors: int = 100
    umap_min_dist: float = 0.0
    min_cluster_share: float = 0.01  # HDBSCAN min_cluster_size = max(5, this share of the training rows)
    min_samples: int | None = None  # HDBSCAN min_samples; None: = min_cluster_size
    noise: Literal["keep", "drop"] = "keep"  # what happens to rows HDBSCAN puts in no cluster
    layer: int = -1  # which hidden layer is pooled (-1: the last, the one the classifier reads)

    def validate(self) -> None:
        if self.reducer == "umap" and not umap_available():
            raise ConfigError("cube.reducer=umap needs the umap-learn package, which is not installed: "
                              "pip install -e '.[filters]', or --set cube.reducer=pca (or auto)")
        if self.n_components < 1 or self.pca_components < 1:
            raise ConfigError(f"cube.n_components and cube.pca_components must be >= 1, got {self.n_components} and "
                              f"{self.pca_components} (e.g. --set cube.n_components=2)")
        if self.umap_neighbors < 2:
            raise ConfigError(f"cube.umap_neighbors must be >= 2, got {self.umap_neighbors} "
                              "(e.g. --set cube.umap_neighbors=100)")
        if not 0.0 <= self.umap_min_dist <= 1.0:
            raise ConfigError(f"cube.umap_min_dist must be in [0, 1], got {self.umap_min_dist}")
        if not 0.0 <= self.min_cluster_share < 0.5:
            raise ConfigError(f"cube.min_cluster_share must be in [0, 0.5), got {self.min_cluster_share} "
                              "(e.g. --set cube.min_cluster_share=0.01)")
        if self.min_samples is not None and self.min_samples < 1:
            raise ConfigError(f"cube.min_samples must be >= 1 or None, got {self.min_samples} "
                              "(None: HDBSCAN's default)")


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Python's and numpy's global random states as they were, whatever runs inside: importing
    ``sklearn.decomposition`` draws from Python's ``random`` (and UMAP's dependencies may draw too)."""
    py, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def resolve_reducer(name: str) -> str:
    return ("umap" if umap_available() else "pca") if name == "auto" else name


def reduce_dimension(x: np.ndarray, reducer: str = "pca", n_components: int = 2, pca_components: int = 20,
                     umap_neighbors: int = 100, umap_min_dist: float = 0.0, seed: int = 0) -> np.ndarray:
    """``x`` [n, d] -> [n, n_components]: PCA (``reducer=pca``) or PCA to ``pca_components`` then UMAP."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if reducer == "pca":
        k = max(1, min(n_components, d, n))
        return PCA(n_components=k, svd_solver="full").fit_transform(x)
    if reducer != "umap":
        raise ValueError(f"unknown reducer {reducer!r}")
    import umap

    k = max(1, min(pca_components, d, n))
    pre = PCA(n_components=k, svd_solver="full").fit_transform(x)
    model = umap.UMAP(n_neighbors=max(2, min(umap_neighbors, n - 1)), min_dist=umap_min_dist,
                      n_components=n_components, random_state=seed, transform_seed=seed, n_jobs=1)
    return np.asarray(model.fit_transform(pre), dtype=np.float64)


def cluster(y: np.ndarray, min_cluster_size: int, min_samples: int | None = None) -> np.ndarray:
    """HDBSCAN cluster ids of the rows of ``y`` [n, k] (-1: noise)."""
    from sklearn.cluster import HDBSCAN

    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 2:
        return np.full(n, -1, dtype=np.int64)
    mcs = max(2, min(int(min_cluster_size), n))
    ms = None if min_samples is None else max(1, min(int(min_samples), n - 1))
    return np.asarray(HDBSCAN(min_cluster_size=mcs, min_samples=ms, copy=True).fit_predict(y), dtype=np.int64)


def label_wise_main_cluster(clusters: np.ndarray, labels: np.ndarray, noise: str = "keep") -> tuple[np.ndarray, list]:
    """Keep-mask: for every label, the rows in the cluster holding most of that label's rows (ties:
    the lower cluster id), plus the noise rows with ``noise=keep``; and per-label statistics."""
    clusters = np.asarray(clusters, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    keep = np.ones(len(labels), dtype=bool)
    stats = []
    for y in np.unique(labels):
        mine = labels == y
        ids, counts = np.unique(clusters[mine & (clusters >= 0)], return_counts=True)
        noise_rows = mine & (clusters < 0)
        entry = {"label": int(y), "rows": int(mine.sum()), "clusters": int(len(ids)), "noise": int(noise_rows.sum())}
        if len(ids):
            main = int(ids[np.argmax(counts)])  # argmax takes the first (lowest id) of equal counts
            drop = mine & (clusters >= 0) & (clusters != main)
            if noise == "drop":
                drop |= noise_rows
            keep &= ~drop
            entry.update(main_cluster=main, main_rows=int(counts.max()), removed=int(drop.sum()))
        else:
            entry.update(main_cluster=None, main_rows=0, removed=0)
        stats.append(entry)
    return keep, stats


def cube_mask(reps: np.ndarray, labels: list[int], reducer: str = "pca", n_components: int = 2,
              pca_components: int = 20, umap_neighbors: int = 100, umap_min_dist: float = 0.0,
              min_cluster_share: float = 0.01, min_samples: int | None = None, noise: str = "keep",
              seed: int = 0) -> tuple[np.ndarray, dict]:
    """(keep-mask, statistics) for rows with representations ``reps`` [n, d] and ``labels``."""
    start = time.perf_counter()
    labels_arr = np.asarray(labels, dtype=np.int64)
    mcs = max(5, int(round(min_cluster_share * len(labels_arr))))
    with _global_rng_kept():
        low = reduce_dimension(reps, reducer, n_components, pca_components, umap_neighbors, umap_min_dist, seed)
        ids = cluster(low, mcs, min_samples)
    keep, per_label = label_wise_main_cluster(ids, labels_arr, noise)
    stats = {
        "reducer_used": reducer, "min_cluster_size": mcs, "min_samples": min_samples,
        "n_clusters": int(len(set(ids.tolist()) - {-1})), "noise_rows": int((ids < 0).sum()),
        "per_label": per_label, "rows_removed": int((~keep).sum()),
        "cube_seconds": round(time.perf_counter() - start, 3),
    }
    return keep, stats


@register("defense", "cube")
class Cube(Defense):
    """CUBE: cluster the poisoned model's representations (UMAP/PCA + HDBSCAN), keep each label's largest cluster."""

    Config = CubeConfig

    def resolved_identity(self) -> dict:
        # reducer=auto is PCA without umap-learn and UMAP with it: the key says which. PCA, what every
        # record made so far used (no machine that made them had umap-learn), adds nothing, so those
        # keys stay as they were.
        if self.config.reducer == "auto" and resolve_reducer("auto") == "umap":
            return {"reducer": "umap"}
        return {}

    def select_train(self, rows, ctx: DefenseContext) -> np.ndarray:
        c = self.config
        victim = ctx.plain_victim()  # the model trained on the poisoned set
        reps = victim.hidden_states(list(rows["text"]), layer=c.layer)
        reducer = resolve_reducer(c.reducer)
        seed = int(ctx.rng("cube-umap").integers(2**31 - 1))
        keep, stats = cube_mask(reps, list(rows["label"]), reducer, c.n_components, c.pca_components,
                                c.umap_neighbors, c.umap_min_dist, c.min_cluster_share, c.min_samples, c.noise, seed)
        if not keep.any():  # cannot happen with a main cluster per label; kept as a guard
            stats["fallback"] = "every row was removed; kept all rows"
            keep = np.ones(len(keep), dtype=bool)
        ctx.log(**stats)
        return keep
