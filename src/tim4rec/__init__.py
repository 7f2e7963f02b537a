"""tim4rec: time-aware sequential recommendation (TiM4Rec and baselines).

Public entry points::

    import tim4rec
    results = tim4rec.train({"model": "sasrec", "dataset": "ml-100k"})
    results["test"]["ndcg@10"]

See :mod:`tim4rec.models` for the model contract and :mod:`tim4rec.evaluation` for metrics.
"""

from typing import Any

from tim4rec import errors
from tim4rec.version import __version__


def train(config: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Train and evaluate a model; return the results dict.

    Settings as a dict with the YAML configs' keys (RecBole names) plus ``model`` and ``dataset``,
    and/or as keywords (``tim4rec.train(model="sasrec", dataset="ml-100k")``). Options:
    ``resume``, ``config_files``, ``set_args``, ``output_dir``; see :func:`tim4rec.training.api.train`.
    """
    from tim4rec.training.api import train as _train

    return _train(config, **options)


__all__ = ["errors", "train", "__version__"]
