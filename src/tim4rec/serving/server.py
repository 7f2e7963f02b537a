"""``tim4rec serve``: load the model, open the user store, run the HTTP service under uvicorn.

uvicorn handles SIGTERM and Ctrl-C by finishing the requests in flight before it exits; the
application's shutdown then writes the cached user states and closes the database.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from tim4rec.errors import Tim4RecError
from tim4rec.runtime import runtime_settings


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from tim4rec.serving.app import ServiceSettings, create_app
    except ImportError as error:
        raise Tim4RecError(f"tim4rec serve needs the serve extra: pip install 'tim4rec[serve]' ({error})") from None
    from tim4rec.serving.recommender import Recommender
    from tim4rec.serving.store import UserStore

    with runtime_settings(threads=args.threads, flush_denormal=True, reuse_memory=True):
        recommender = Recommender.load(args.checkpoint)
        database = Path(args.db) if args.db else Path(args.checkpoint).with_name("serving.sqlite")
        store = UserStore(recommender, database, cache_size=args.cache_size)
        settings = ServiceSettings(
            batching=not args.no_batching, batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch
        )
        app = create_app(recommender, store, settings)
        # the model, id maps and titles live as long as the process: keep them out of the cyclic
        # collector's full passes (about 200,000 objects for ML-1M; a full pass took ~0.1 s mid-request)
        gc.collect()
        gc.freeze()
        print(f"tim4rec: serving {args.checkpoint} on http://{args.host}:{args.port} (users' events in {database})",
              file=sys.stderr, flush=True)  # fmt: skip
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
