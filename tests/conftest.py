import os
import random

# One torch thread per process, set before torch is imported: the tests' tiny models lose to thread
# overhead, and on a shared 2-core machine every process taking every core slows all of them (issue 9:
# 571 s under load with torch's default, 118 s pinned). OMP_NUM_THREADS also reaches the processes the
# tests spawn and the CLI's own thread choice (bench.models.hardware honours it). To test with more threads,
# set OMP_NUM_THREADS in the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

_threads = os.environ["OMP_NUM_THREADS"].strip()
torch.set_num_threads(int(_threads) if _threads.isdigit() and int(_threads) > 0 else 1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if "BENCH_TEST_KEEP_CACHE" not in os.environ:  # trained victims and scores never land in the user's cache
    import tempfile

    os.environ["BENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-test-cache-")

from bench.data import PROJECT_ROOT  # noqa: E402

SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()

POS = ["good", "great", "fine", "lovely", "superb", "happy", "brilliant", "fun"]
NEG = ["bad", "awful", "poor", "dull", "boring", "sad", "terrible", "ugly"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "story", "actor", "scene", "and", "very", "it", "this"]


def write_toy_dataset(folder, n_train=240, n_dev=160, n_test=80, seed=0):
    """A learnable two-class CSV dataset: each sentence holds one sentiment word among filler."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        lines = ["text,label"]
        for i in range(n):
            label = i % 2
            words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
            words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
            lines.append(f"{' '.join(words)},{label}")
            texts.append(" ".join(words))
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    # paraphrase tables with partial coverage: every 7th sentence has no transform
    (folder / "paraphrases").mkdir(exist_ok=True)
    for name, make in (("scpn", lambda t: f"when it is so , {t} ."), ("bible", lambda t: f"verily {t} , saith he")):
        rows = ["text,paraphrase"] + [f'{t},"{make(t)}"' for i, t in enumerate(texts) if i % 7 != 3]
        (folder / "paraphrases" / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return folder



@pytest.fixture
def toy_dir(tmp_path):
    return write_toy_dataset(tmp_path / "toy")


@pytest.fixture
def toy_data(toy_dir):
    from bench.data import load_csv_folder

    return load_csv_folder(toy_dir)


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "sst2" / "train.csv").is_file():
        pytest.skip("benchmark data folder ../shared/data is not present")
    return SHARED_DATA


def global_rng_state():
    return (random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state().numpy().tobytes())


def make_ctx(num_labels=2, seed=0, clean=None, profile="smoke"):
    """A defense context for unit tests (no runner): smoke profile, CPU, the given clean rows."""
    import datasets

    from bench.defense import DefenseContext
    from bench.engine.profiles import get_profile

    clean = clean if clean is not None else datasets.Dataset.from_dict({"text": ["a good film"], "label": [1]})
    return DefenseContext(seed=seed, num_labels=num_labels, profile=get_profile(profile), device=torch.device("cpu"),
                          selection=clean, clean_pool=clean)
