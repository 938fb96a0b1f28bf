from omnidit.cli import main

raise SystemExit(main())
