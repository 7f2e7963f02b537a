"""Batch inference: the top ``k`` items for every user of a dataset (or a list of them), to CSV or Parquet.

Each user's history is all of their events in the dataset (the model sees its most recent
``max_seq_length`` events if it has a fixed length); users are scored in batches of one forward
each, with a progress bar. One row per (user, rank): ``user, rank, item, score, title``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tim4rec.errors import Tim4RecError
from tim4rec.io.files import prepare_folder
from tim4rec.serving.recommender import Recommender, check_k

FORMATS = (".csv", ".parquet")


def read_users(path: str | Path) -> list[str]:
    """User ids, one per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise Tim4RecError(f"{path}: no such file of user ids")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def recommend_users(
    recommender: Recommender,
    users: Sequence[str] | None,
    k: int,
    output: str | Path,
    *,
    batch_size: int = 256,
    exclude_seen: bool = True,
    show_progress: bool = True,
    request_time: float | None = None,
) -> pd.DataFrame:
    """Recommend for ``users`` (None: every dataset user); write ``output`` (.csv or .parquet)."""
    from tqdm import tqdm

    output, k = Path(output), check_k(k)
    if output.suffix.lower() not in FORMATS:
        raise Tim4RecError(f"{output}: expected a .csv or .parquet file name")
    everyone = list(recommender.user_index)
    users = everyone if users is None else [str(u) for u in users]
    unknown = [u for u in users if u not in recommender.user_index]
    if unknown:
        raise Tim4RecError(f"{len(unknown)} user id(s) not in the dataset, e.g. {unknown[:3]}")
    rows = []
    batches = range(0, len(users), batch_size)
    progress = tqdm(batches, desc="recommending", unit="batch", disable=not show_progress or None, file=sys.stderr)
    for start in progress:
        chunk = users[start : start + batch_size]
        histories = [recommender.user_history(u) for u in chunk]
        answers = recommender.recommend_batch(histories, k, exclude_seen, request_time=request_time)
        for user, answer in zip(chunk, answers):
            rows += [(user, rank, x.item, x.score, x.title) for rank, x in enumerate(answer.items, start=1)]
    frame = pd.DataFrame(rows, columns=["user", "rank", "item", "score", "title"])
    prepare_folder(output.parent, "folder")
    temporary = output.with_name(f".{output.name}.tmp")
    if output.suffix.lower() == ".csv":
        frame.to_csv(temporary, index=False)
    else:
        frame.to_parquet(temporary, index=False)
    temporary.replace(output)
    return frame
