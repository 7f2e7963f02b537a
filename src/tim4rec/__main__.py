from tim4rec.cli import main

raise SystemExit(main())
