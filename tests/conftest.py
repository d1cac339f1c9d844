"""Shared fixtures: tiny local models (no network) and the reverse-digits toy task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The support matrix (docs/support-matrix.md): the `prove` fixture and the --support-matrix option.
from tests.support_matrix import (
    prove,  # noqa: F401
    pytest_addoption,  # noqa: F401
    pytest_runtest_makereport,  # noqa: F401
    pytest_sessionfinish,  # noqa: F401
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine (CI) they cost up to 20x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _tokenisation_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests never read or fill the user's tokenisation cache (~/.cache/tunekit)."""
    old = os.environ.get("TUNEKIT_CACHE")
    os.environ["TUNEKIT_CACHE"] = str(tmp_path_factory.mktemp("tunekit-cache"))
    yield
    if old is None:
        os.environ.pop("TUNEKIT_CACHE", None)
    else:
        os.environ["TUNEKIT_CACHE"] = old


@pytest.fixture(scope="session")
def task_texts() -> list[str]:
    from tunekit.testing import reverse_task

    return [r["prompt"] + " " + r["completion"] for r in reverse_task(300, seed=100)]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    from tunekit.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", texts=task_texts)


@pytest.fixture(scope="session")
def tiny_llama_init02(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    """Random weights at a larger scale, so adapters (frozen head) can learn the toy task from scratch."""
    from tunekit.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-llama-02"), arch="llama", texts=task_texts, initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_qwen_init02(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    """A tied-embedding Qwen2 whose random logits have a usable scale (varied greedy answers, a real check)."""
    from tunekit.testing import tiny_model

    return tiny_model(
        tmp_path_factory.mktemp("qwen02"),
        arch="qwen2",
        texts=task_texts,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    from tunekit.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-qwen"), arch="qwen2", texts=task_texts, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_base_no_template(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    """A base model with no chat template and no pad token: tunekit must add both."""
    from tunekit.testing import tiny_model

    return tiny_model(
        tmp_path_factory.mktemp("tiny-base"), arch="llama", texts=task_texts, chat_template=False, pad_token=False
    )


@pytest.fixture(scope="session")
def full_reverse(tiny_llama):
    """A Full fine-tune of the tiny llama on the reverse task, with its exact match before training."""
    import tunekit as tk
    from tunekit.testing import reverse_task

    held = reverse_task(40, seed=2)
    tuner = tk.Tuner(
        tiny_llama,
        method=tk.Full(),
        training=tk.Training(max_steps=250, learning_rate=3e-3, batch_size=16, device="cpu", log_every=1),
    )
    outs = tuner.generate([r["prompt"] for r in held], max_new_tokens=16)
    before = sum(o == r["completion"] for o, r in zip(outs, held)) / len(held)
    result = tuner.fit(reverse_task(400, seed=1), eval_data=held)
    return tuner, result, before, held
