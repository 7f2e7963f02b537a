"""Serving: recommendations from a saved model (Python API, batch inference, streaming user state, HTTP).

- :class:`~tim4rec.serving.recommender.Recommender`: raw item ids and times in, ranked raw ids out;
- :class:`~tim4rec.serving.store.UserStore`: users' events in SQLite and their streaming states;
- :mod:`tim4rec.serving.batch`: every user of a dataset, to CSV or Parquet (``tim4rec recommend``);
- :mod:`tim4rec.serving.app`: the HTTP service and demo page (``tim4rec serve``, the ``serve`` extra).
"""

from tim4rec.serving.recommender import Recommendation, RecommendedItem, Recommender
from tim4rec.serving.store import UserStore

__all__ = ["Recommendation", "RecommendedItem", "Recommender", "UserStore"]
